"""The pytest plugin (pqrun.pytest_plugin) and pqrun.testing's assertions, run by pytest
itself on a user's test file (pytester), against the real database."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import asyncpg
import pytest

from pqrun import PgJobStore, pytest_plugin
from pqrun.testing import assert_enqueued, drain, refute_enqueued, temporary_queue

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

USERS_TESTS = """
import pytest
from pqrun.testing import assert_enqueued, drain, refute_enqueued

async def signup(ctx):
    await ctx.store.enqueue("send_email", {"user": ctx.job.payload["user"], "kind": "welcome"})

async def send_email(ctx):
    return "sent"

HANDLERS = {"signup": signup, "send_email": send_email}

@pytest.mark.asyncio
async def test_signup_queues_the_welcome_email(pqrun_queue):
    assert pqrun_queue.schema.startswith("pqrun_test_")
    await pqrun_queue.enqueue("signup", {"user": 7})
    await assert_enqueued(pqrun_queue, "signup", status="READY")
    await refute_enqueued(pqrun_queue, "send_email")
    assert await drain(pqrun_queue, HANDLERS) == 2
    [email] = await assert_enqueued(pqrun_queue, "send_email", {"user": 7}, status="DONE")
    assert email.result == "sent"
    await refute_enqueued(pqrun_queue, "send_email", {"user": 8})

@pytest.mark.asyncio
async def test_each_test_has_a_queue_of_its_own(pqrun_queue):
    assert await pqrun_queue.list_jobs() == []

@pytest.mark.asyncio
async def test_a_failed_assertion_lists_what_was_enqueued(pqrun_queue):
    await pqrun_queue.enqueue("send_email", {"user": 1, "kind": "reset"}, priority=3)
    await assert_enqueued(pqrun_queue, "send_email", {"kind": "welcome"}, priority=3)

def test_without_the_fixtures_nothing_happens():
    pass
"""

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def plugin_args() -> list[str]:
    """``-p pqrun.pytest_plugin`` unless the installed entry point loads it already."""
    installed = any(ep.value == "pqrun.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "pqrun.pytest_plugin"]


async def queue_schemas(dsn: str) -> set[str]:
    """The schemas temporary_queue made (pqrun_test_...) in the session's database."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pqrun\\_test\\_%'"
        )
    finally:
        await conn.close()
    return {row["nspname"] for row in rows}


async def test_a_users_tests_get_a_queue_each_and_readable_assertions(
    pytester: pytest.Pytester, dsn: str
) -> None:
    before = await queue_schemas(dsn)
    pytester.makeini(INI)
    pytester.makepyfile(test_users=USERS_TESTS)
    result = pytester.runpytest_subprocess(*plugin_args(), f"--pqrun-dsn={dsn}", "-q")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: no 'send_email' job with a payload holding {'kind': 'welcome'}"
            " and priority=3 was enqueued; the queue holds these:",
            '*#1 send_email READY priority=3 payload={"kind": "reset", "user": 1}',
        ]
    )
    # Every test's schema is gone with its jobs.
    assert await queue_schemas(dsn) == before


async def test_without_a_dsn_the_queue_tests_are_skipped_saying_how_to_give_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PQRUN_TEST_DSN", raising=False)
    monkeypatch.delenv("PQRUN_DSN", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_users=USERS_TESTS)
    result = pytester.runpytest_subprocess(*plugin_args(), "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        ["*pqrun_queue needs a PostgreSQL to test against: pass --pqrun-dsn=*"]
    )


async def test_the_queue_takes_the_options_a_conftest_gives(
    pytester: pytest.Pytester, dsn: str
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(
        """
import pytest
from django.core.serializers.json import DjangoJSONEncoder

@pytest.fixture
def pqrun_queue_options():
    return {"json_encoder": DjangoJSONEncoder}
"""
    )
    pytester.makepyfile(
        test_dates="""
import datetime
import pytest
from pqrun.testing import assert_enqueued

@pytest.mark.asyncio
async def test_a_date(pqrun_queue):
    await pqrun_queue.enqueue("report", {"day": datetime.date(2024, 5, 1)})
    await assert_enqueued(pqrun_queue, "report", {"day": datetime.date(2024, 5, 1)})
    await assert_enqueued(pqrun_queue, "report", {"day": "2024-05-01"})
"""
    )
    pytest.importorskip("django")
    result = pytester.runpytest_subprocess(*plugin_args(), f"--pqrun-dsn={dsn}")
    result.assert_outcomes(passed=1)


def test_the_plugin_is_registered_and_its_fixtures_clash_with_no_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"pqrun": "pqrun.pytest_plugin"}
    fixtures = [
        name
        for name, value in vars(pytest_plugin).items()
        if hasattr(value, "_fixture_function")
        or type(value).__name__ == "FixtureFunctionDefinition"
    ]
    assert sorted(fixtures) == ["pqrun_dsn", "pqrun_queue", "pqrun_queue_options"]


async def test_assertions_match_payload_subsets_and_fields(dsn: str) -> None:
    async with temporary_queue(dsn) as queue:
        first = await queue.enqueue("mail", {"to": {"user": 1, "name": "Ada"}, "vip": True})
        await queue.enqueue("mail", {"to": {"user": 2}, "vip": 1}, priority=5)
        assert [j.id for j in await assert_enqueued(queue, "mail", {"to": {"user": 1}})] == [first]
        assert len(await assert_enqueued(queue, "mail")) == 2
        await assert_enqueued(queue, "mail", priority=5, status="READY")
        await refute_enqueued(queue, "mail", {"vip": 2})
        await refute_enqueued(queue, "mail", {"to": {"user": 2}}, priority=0)
        # 1 is not True, as in the JSON stored.
        [vip] = await assert_enqueued(queue, "mail", {"vip": True})
        assert vip.id == first
        with pytest.raises(
            AssertionError, match=r"expected no .mail. job, found 2:\n  #2 mail READY"
        ):
            await refute_enqueued(queue, "mail")
        with pytest.raises(AssertionError, match="no 'sms' job was enqueued; the queue holds"):
            await assert_enqueued(queue, "sms")
        with pytest.raises(TypeError, match=r"Job has no field.* colour"):
            await assert_enqueued(queue, "mail", colour="red")


async def test_drain_runs_the_jobs_with_the_handlers_given(dsn: str) -> None:
    async def double(ctx: object) -> int:
        return 2 * ctx.job.payload["n"]  # type: ignore[attr-defined, no-any-return]

    async with temporary_queue(dsn) as queue:
        assert isinstance(queue, PgJobStore)
        await queue.enqueue("double", {"n": 21})
        assert await drain(queue, {"double": double}, concurrency=2) == 1
        [done] = await assert_enqueued(queue, "double", status="DONE")
        assert done.result == 42
