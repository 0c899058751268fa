"""Integrations of pqrun with frameworks: ``pqrun.contrib.django`` (docs/django.md)."""
