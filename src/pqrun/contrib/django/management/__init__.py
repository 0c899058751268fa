"""Django management commands of pqrun: ``manage.py pqrun`` (docs/django.md)."""
