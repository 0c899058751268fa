"""Passwords out of messages: the DSN shown redacted, and error texts that quote none.

docs/security.md describes what is covered.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

REDACTED = "***"

# A URL DSN (postgresql://...); anything else is read as libpq's keyword=value form.
URL_DSN = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
# One keyword=value of libpq's form. A quoted value may hold spaces and \' or \\; an
# unterminated quote runs to the end (so a typo cannot reveal the rest of a password).
KEYWORD_VALUE = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|[^\s']\S*|)",
    re.DOTALL,
)

# ``user:password@`` anywhere in a DSN that is not a URL (a URL whose scheme has a typo).
TYPO_USERINFO = re.compile(r"(?P<user>[^\s:/@]*):(?P<password>[^\s@]+)@")


def _is_secret_key(key: str) -> bool:
    # password and sslpassword, however a URL query spells them (PassWord, pass%77ord):
    # libpq and asyncpg would read some of those spellings as the password, and a key
    # that names a password holds one whoever reads it.
    return "password" in unquote_plus(key).lower()


def _dsn_parts(dsn: str) -> tuple[str, list[str]]:
    """(the DSN with every secret value replaced by ***, the secret values as written
    and decoded). Never raises: a DSN too broken to read is still redacted."""
    found: list[str] = []
    url = URL_DSN.match(dsn)
    if url is None:

        def keyword(match: re.Match[str]) -> str:
            value = match["value"]
            if not _is_secret_key(match["key"]) or value in ("", "''"):
                return match[0]
            found.append(value)
            if value.startswith("'"):
                inner = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
                found.extend((inner, re.sub(r"\\(.)", r"\1", inner)))
            return f"{match['key']}{match['eq']}{REDACTED}"

        redacted = KEYWORD_VALUE.sub(keyword, dsn)

        def typo_userinfo(match: re.Match[str]) -> str:
            # Not a URL, yet ``user:password@`` in it: a URL with a typo in its scheme
            # (``postgresql:/``, ``postgresql//``) still holds a password there.
            found.extend((match["password"], unquote(match["password"])))
            return f"{match['user']}:{REDACTED}@"

        return TYPO_USERINFO.sub(typo_userinfo, redacted), found
    head, body = dsn[: url.end()], dsn[url.end() :]
    # The user info ends at the last @ of the authority. A password written with an
    # unencoded / # or ? still counts as password: the @ is looked for before the query
    # first, then anywhere (at worst more than the password is hidden).
    at = body.split("?", 1)[0].rfind("@")
    if at < 0:
        at = body.rfind("@")
    userinfo, rest = (body[:at], body[at + 1 :]) if at >= 0 else (None, body)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            found += [password, unquote(password)]
            userinfo = f"{user}:{REDACTED}"
        head += f"{userinfo}@"
    before, question, query = rest.partition("?")
    if question:
        params = query.split("&")
        for number, param in enumerate(params):
            key, equals, value = param.partition("=")
            if equals and value and _is_secret_key(key):
                found += [value, unquote(value), unquote_plus(value)]
                params[number] = f"{key}={REDACTED}"
        rest = f"{before}?{'&'.join(params)}"
    return head + rest, found


def redact_dsn(dsn: str) -> str:
    """The DSN with every password in it replaced by ``***``, for messages and logs.

    Covers the URL form (``postgresql://user:pw@host/db``, also with an empty user), a
    password given as a query parameter (``?password=``, ``?sslpassword=``, in any case
    or percent-encoding) and libpq's ``key=value`` form (``password=pw``,
    ``password='a b'``). See docs/security.md.
    """
    return _dsn_parts(dsn)[0]


def _secrets(dsn: str | None, extra: Iterable[object]) -> list[str]:
    """The passwords of ``dsn`` (as written and decoded) and the strings among ``extra``,
    longest first: a decoded password may be part of its encoded spelling."""
    found = [secret for secret in extra if isinstance(secret, str)]
    if dsn:
        found += _dsn_parts(dsn)[1]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


# A text that still holds this many characters of a password in a row (or all of a
# shorter one) after redaction is not shown.
SECRET_PIECE = 5


def dsn_passwords(dsn: str | None) -> list[str]:
    """The passwords written in ``dsn`` (in each spelling it uses), for redaction."""
    return list(_dsn_parts(dsn)[1]) if dsn else []


def redact_secrets(text: str, dsn: str | None, *secrets: object) -> str:
    """``text`` with the DSN shown redacted and each of its passwords (and ``secrets``,
    such as a ``password=`` keyword argument) replaced by ``***``.

    For texts pqrun does not write itself: an asyncpg or OS error may echo the DSN or
    the password, in any of the spellings the DSN used.
    """
    if dsn:
        text = text.replace(dsn, redact_dsn(dsn))  # first, so host and database stay readable
    for secret in _secrets(dsn, secrets):
        text = text.replace(secret, REDACTED)
    return text


def _holds_piece(text: str, secrets: list[str]) -> bool:
    for secret in secrets:
        size = min(SECRET_PIECE, len(secret))
        if any(secret[i : i + size] in text for i in range(len(secret) - size + 1)):
            return True
    return False


def error_text(exc: BaseException, dsn: str | None, *secrets: object) -> str:
    """``Type: text`` of an error, fit for a message: through ``redact_secrets``, and
    without its text at all when that still holds a piece of a password.

    A driver that cannot read a DSN quotes pieces of it (asyncpg reads a password with
    an unencoded ``[`` as an IPv6 address, and says which): no replacement of the whole
    password catches those.
    """
    text = redact_secrets(str(exc), dsn, *secrets)
    if _holds_piece(text, _secrets(dsn, secrets)):
        text = (
            "(its text is not shown: it quotes part of the password. Percent-encode "
            "the characters @ : / ? # [ ] % in a password in a URL DSN)"
        )
    return f"{type(exc).__name__}: {text}"


def cause_without_secrets(
    exc: BaseException, dsn: str | None, *secrets: object
) -> BaseException | None:
    """What an error made from ``exc`` should be raised ``from``: ``exc``, unless its
    traceback (its own causes included) would print a password of ``dsn`` or a piece of
    one; then None, and the new error's message carries ``error_text(exc, ...)``."""
    shown = "".join(traceback.format_exception(exc))
    return None if _holds_piece(shown, _secrets(dsn, secrets)) else exc
