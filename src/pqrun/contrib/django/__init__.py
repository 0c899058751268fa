"""pqrun in a Django project: add ``"pqrun.contrib.django"`` to INSTALLED_APPS.

It brings migrations that apply pqrun's schema (``manage.py migrate``), the
``manage.py pqrun ...`` command (pqrun's CLI on a database of ``DATABASES``), a read-only
admin of jobs, ``enqueue`` in Django's transaction, and ``django_handler`` for plain
handlers that use the ORM. Needs the ``django`` extra (``pip install 'pqrun[django]'``);
docs/django.md has it all.
"""

from __future__ import annotations

from .handlers import django_handler, django_handlers
from .jobs import enqueue, enqueue_many

__all__ = ["django_handler", "django_handlers", "enqueue", "enqueue_many"]
