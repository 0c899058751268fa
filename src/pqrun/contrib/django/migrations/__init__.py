"""pqrun's schema as Django migrations: each applies the packaged ddl.sql (docs/django.md)."""
