"""Enqueue from Django code, in Django's transaction, where ``PQRUN`` says the queue is.

from django.db import transaction
from pqrun.contrib.django import enqueue

with transaction.atomic():
    order.save()
    enqueue("send_receipt", {"order": order.id})  # exists if and only if this commits
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import connections

import pqrun.sync

from .conf import PqrunSettings, pqrun_settings


def enqueue(job_type: str, payload: Any = None, *, using: str | None = None, **options: Any) -> int:
    """``pqrun.sync.enqueue`` on Django's connection to ``PQRUN['DATABASE']`` (or the
    alias ``using``), in ``PQRUN['SCHEMA']``: the job is part of the current transaction
    (``transaction.atomic()``, or autocommit outside one). ``options`` are those of
    ``PgJobStore.enqueue`` (priority, run_after, dedupe_key, ...). Returns the job's id.
    """
    conf = pqrun_settings()
    connection = connections[using or conf.database]
    return pqrun.sync.enqueue(
        connection, job_type, payload, schema=conf.schema, **_encoding(conf), **options
    )


def enqueue_many(jobs: Iterable[Mapping[str, Any]], *, using: str | None = None) -> list[int]:
    """``pqrun.sync.enqueue_many`` as ``enqueue`` does it: in Django's transaction."""
    conf = pqrun_settings()
    connection = connections[using or conf.database]
    return pqrun.sync.enqueue_many(connection, jobs, schema=conf.schema, **_encoding(conf))


def _encoding(conf: PqrunSettings) -> dict[str, Any]:
    """``json_encoder=`` for pqrun.sync when ``PQRUN['JSON_ENCODER']`` is set."""
    encoder = conf.json_encoder_class()
    if encoder is None:
        return {}
    return {"json_encoder": encoder}
