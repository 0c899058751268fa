"""pqrun's pytest plugin: a queue of its own for each test (docs/testing.md).

Installed with pqrun (the ``pytest11`` entry point ``pqrun``); it adds the option
``--pqrun-dsn`` and the fixtures below, and does nothing for a test that uses none of
them. ``-p no:pqrun`` turns it off. The assertions and ``drain`` are in
``pqrun.testing``.

- ``pqrun_dsn``: the PostgreSQL to test against, from ``--pqrun-dsn``, else
  ``$PQRUN_TEST_DSN``, else ``$PQRUN_DSN``; a test that needs it is skipped without one.
- ``pqrun_queue_options``: keyword arguments for the queue's ``PgJobStore``
  (``json_encoder=``, ...); override it in your conftest.py.
- ``pqrun_queue``: a started PgJobStore in a schema made for the test (``ddl.sql``
  applied), dropped with its jobs after it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import pytest

from .store import PgJobStore
from .testing import temporary_queue

F = TypeVar("F", bound=Callable[..., Any])


def _async_fixture() -> Callable[[F], F]:
    try:
        import pytest_asyncio
    except ImportError:  # anyio's plugin runs plain async fixtures
        return cast("Callable[[F], F]", pytest.fixture)
    return cast("Callable[[F], F]", pytest_asyncio.fixture)  # strict mode too


NO_DSN = (
    "pqrun_queue needs a PostgreSQL to test against: pass --pqrun-dsn=postgresql://..., "
    "or set PQRUN_TEST_DSN (or PQRUN_DSN); its role needs the right to create schemas"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("pqrun").addoption(
        "--pqrun-dsn",
        default=None,
        help="the PostgreSQL the pqrun_queue fixture makes its schemas in "
        "(default: $PQRUN_TEST_DSN, then $PQRUN_DSN)",
    )


@pytest.fixture(scope="session")
def pqrun_dsn(request: pytest.FixtureRequest) -> str:
    """The DSN of the PostgreSQL to test against; skips the test when none is given."""
    dsn = (
        request.config.getoption("--pqrun-dsn")
        or os.environ.get("PQRUN_TEST_DSN")
        or os.environ.get("PQRUN_DSN")
    )
    if not dsn:
        pytest.skip(NO_DSN)
    return str(dsn)


@pytest.fixture
def pqrun_queue_options() -> dict[str, Any]:
    """Keyword arguments for ``pqrun_queue``'s PgJobStore; override to add your own."""
    return {}


@_async_fixture()
async def pqrun_queue(
    pqrun_dsn: str, pqrun_queue_options: dict[str, Any]
) -> AsyncIterator[PgJobStore]:
    """A started PgJobStore in a fresh schema, dropped with its jobs after the test."""
    async with temporary_queue(pqrun_dsn, **pqrun_queue_options) as store:
        yield store
