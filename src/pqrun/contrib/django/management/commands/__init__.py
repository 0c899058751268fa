"""``manage.py pqrun``: pqrun's CLI on a database of DATABASES (docs/django.md)."""
