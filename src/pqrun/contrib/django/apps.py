"""The Django app of pqrun: put ``"pqrun.contrib.django"`` in INSTALLED_APPS."""

from __future__ import annotations

from django.apps import AppConfig


class PqrunConfig(AppConfig):
    """pqrun's app: the schema's migrations, ``manage.py pqrun``, the jobs' admin."""

    name = "pqrun.contrib.django"
    label = "pqrun"
    verbose_name = "pqrun job queue"
    default_auto_field = "django.db.models.BigAutoField"
