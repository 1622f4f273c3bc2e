CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY,
    item text NOT NULL,
    quantity integer NOT NULL,
    status text NOT NULL DEFAULT 'paid',
    job_id text
);
CREATE TABLE IF NOT EXISTS stock (item text PRIMARY KEY, available integer NOT NULL);
INSERT INTO stock VALUES ('book', 3), ('lamp', 1) ON CONFLICT DO NOTHING;
