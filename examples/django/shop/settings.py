"""Settings of the example shop: PostgreSQL from the PG* variables, nothing else installed."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["shop"]
ROOT_URLCONF = "shop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SCHEMA = os.environ.get("SHOP_SCHEMA")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "test"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        # The shop's tables in a schema of their own when SHOP_SCHEMA is set (the tests do).
        "OPTIONS": {"options": f"-c search_path={SCHEMA}"} if SCHEMA else {},
    }
}

#: Conveyor's store: the same database, so a view can enqueue in its own transaction.
CONVEYOR_URL = os.environ.get("CONVEYOR_URL", "postgresql://postgres@127.0.0.1:5432/test")

# Errors of views (with their tracebacks) to the console.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
