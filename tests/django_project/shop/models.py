"""What the test handlers write."""

from __future__ import annotations

from django.db import models


class Receipt(models.Model):
    """One per job the ``shop.record`` handler ran, with the backend its ORM used."""

    job_id: models.BigIntegerField[int, int] = models.BigIntegerField(unique=True)
    backend_pid: models.IntegerField[int, int] = models.IntegerField()
