"""Fetch the jobs' admin pages as a superuser (Django's test client) and print what the
test checks, as JSON: status codes and whether some texts appear."""

from __future__ import annotations

import json
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.test import Client
from django.test.utils import setup_test_environment


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("job_id", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        setup_test_environment()
        user_model = get_user_model()
        user = user_model.objects.filter(username="admin").first()
        if user is None:
            user = cast(Any, user_model.objects).create_superuser(
                "admin", "admin@example.com", "pw"
            )
        client = Client()
        client.force_login(user)
        job_id = options["job_id"]
        base = "/admin/pqrun/job/"
        pages = {
            "list": base,
            "failed": f"{base}?status=FAILED",
            "ready_of_type": f"{base}?status=READY&job_type=shop.hello",
            "search_id": f"{base}?q={job_id}",
            "search_type": f"{base}?q=shop.hello",
            "job": f"{base}{job_id}/change/",
            "add": f"{base}add/",
            "delete": f"{base}{job_id}/delete/",
            "lookup_payload": f"{base}?payload__icontains=zzz",
            "lookup_error_regex": f"{base}?last_error__regex=(a%2B)%2B$",
            "search_superscript": f"{base}?q=%C2%B2",
        }
        found: dict[str, Any] = {}
        for name, url in pages.items():
            response = client.get(url)
            found[name] = {"status": response.status_code, "text": response.content.decode()}
        found["post_delete"] = client.post(pages["delete"], {"post": "yes"}).status_code
        self.stdout.write(json.dumps(found))
