"""Secrets under hostile input: a DSN with a typo in its scheme separator is neither a URL
nor libpq's keyword form, yet its password must not show in repr(store), in
DatabaseUnavailable or in its chained cause (asyncpg takes the rest as a database name,
and the server quotes it).
"""

from __future__ import annotations

import pytest

from pqrun import PgJobStore
from pqrun._store.secrets import redact_dsn
from pqrun.errors import DatabaseUnavailable

SECRET = "S3cretPW"
TYPOS = [
    f"postgresql:/app:{SECRET}@127.0.0.1:5432/postgres",  # one slash
    f"postgresql//app:{SECRET}@127.0.0.1:5432/postgres",  # no colon
    f"postgresql:app:{SECRET}@127.0.0.1:5432/postgres",  # no slashes
]


@pytest.mark.parametrize("dsn", TYPOS)
def test_redact_dsn_hides_the_password_of_a_dsn_with_a_scheme_typo(dsn: str) -> None:
    assert SECRET not in redact_dsn(dsn)
    assert SECRET not in repr(PgJobStore(dsn))


@pytest.mark.parametrize("dsn", TYPOS)
async def test_the_connect_error_of_a_dsn_with_a_scheme_typo_hides_its_password(dsn: str) -> None:
    store = PgJobStore(dsn, connect_timeout=2)
    with pytest.raises(DatabaseUnavailable) as caught:
        await store.start()
    texts = [str(caught.value), repr(caught.value.__cause__)]
    assert not any(SECRET in text for text in texts), texts
