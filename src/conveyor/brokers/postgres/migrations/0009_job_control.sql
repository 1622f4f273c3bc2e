-- Version 9: job control (docs/job-control.md). A cancel request names the run it was made for
-- (cancel_token: the token of the lease held then; it needs no clearing when the job leaves
-- running, since no later claim has that token) and carries its grace; snoozes counts the
-- job's snoozes. NULL for none: a job never cancelled or snoozed pays no bytes for them.
ALTER TABLE {schema}.jobs ADD COLUMN cancel_token bigint, ADD COLUMN cancel_grace double precision,
    ADD COLUMN snoozes integer;
