"""A minimal Django project with pqrun's app, for tests/test_django.py."""
