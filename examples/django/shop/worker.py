"""What the worker loads: ``conveyor worker shop.worker:app``.

Django is configured and set up here, before the tasks (and the models they import) are."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django.setup()

from shop.tasks import app  # noqa: E402 - only once Django is set up

__all__ = ["app"]
