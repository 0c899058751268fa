"""Enqueue inside transaction.atomic() (with pqrun.sync.enqueue on Django's connection,
and with pqrun.contrib.django.enqueue): committed, rolled back, and a rolled-back
savepoint inside a committed transaction. Prints the ids as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.core.management.base import BaseCommand
from django.db import connection, transaction

import pqrun.sync
from pqrun.contrib.django import enqueue
from pqrun.contrib.django.conf import pqrun_settings


class Rollback(Exception):
    pass


class Command(BaseCommand):
    def handle(self, *args: Any, **options: Any) -> None:
        ids: dict[str, Any] = {}
        with transaction.atomic():
            ids["committed"] = pqrun.sync.enqueue(
                connection, "shop.hello", {"case": "commit"}, schema=pqrun_settings().schema
            )
        try:
            with transaction.atomic():
                ids["rolled_back"] = enqueue("shop.hello", {"case": "rb"})
                raise Rollback
        except Rollback:
            pass
        with transaction.atomic():
            # PQRUN["JSON_ENCODER"] is Django's: dates, decimals and UUIDs go in as text.
            ids["encoded"] = enqueue(
                "shop.hello",
                {
                    "case": "encoded",
                    "when": datetime(2026, 12, 6, 9, 30, tzinfo=UTC),
                    "amount": Decimal("9.99"),
                    "order": UUID("12345678-1234-5678-1234-567812345678"),
                },
            )
        with transaction.atomic():
            ids["outer"] = enqueue("shop.hello", {"case": "outer"})
            try:
                with transaction.atomic():
                    ids["savepoint"] = enqueue("shop.hello", {"case": "savepoint"})
                    raise Rollback
            except Rollback:
                pass
        self.stdout.write(json.dumps(ids))
