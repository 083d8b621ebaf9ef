"""Database URLs: the default, the forms people paste, and what may be shown of them.

Kept apart from ``database.py``, and SQLAlchemy (whose URL parser these use) is imported inside the
functions: the settings name the default URL, and a read-only CLI command (``threadflow runs``) starts
without loading SQLAlchemy at all where it can (see ``run_listing.py``).
"""

from __future__ import annotations

import re

from .errors import DatabaseURLError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///threadflow.db"

#: PostgreSQL's ``synchronous_commit`` values (https://www.postgresql.org/docs/current/runtime-config-wal.html).
SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")


def postgres_url_settings(url: str) -> tuple[str, dict[str, str]]:
    """Split server settings threadflow accepts in a PostgreSQL URL from what asyncpg is given.

    ``?synchronous_commit=off`` is sent as a server setting of every connection (asyncpg's
    ``server_settings``): asyncpg itself refuses unknown URL parameters.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    value = parsed.query.get("synchronous_commit")
    if value is None:
        return url, {}
    if isinstance(value, tuple) or value.lower() not in SYNCHRONOUS_COMMIT:
        raise ValueError(f"synchronous_commit={value!r} in the database URL: use one of {', '.join(SYNCHRONOUS_COMMIT)}")
    rest = parsed.difference_update_query(["synchronous_commit"])
    return rest.render_as_string(hide_password=False), {"synchronous_commit": value.lower()}


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (``sqlite:///x.db``, ``postgresql://...``) and pick the async driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        # ValueError: SQLAlchemy's parser reads the port with int() (``:54x32``, a typo).
        problem = "its port is not a number" if isinstance(exc, ValueError) else "it must start with a scheme and ://"
        raise DatabaseURLError(
            f"Database URL {masked(url)!r} is not a valid SQLAlchemy URL: {problem}. "
            "Use sqlite+aiosqlite:///path/to/threadflow.db or postgresql+asyncpg://user:password@host:5432/db."
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        try:
            postgres_url_settings(parsed.render_as_string(hide_password=False))
        except ValueError as exc:
            raise DatabaseURLError(f"{exc}.") from None
    else:
        raise DatabaseURLError(
            f"Database URL {parsed.render_as_string(hide_password=True)!r} uses {backend!r}; threadflow supports "
            "SQLite (sqlite+aiosqlite://) and PostgreSQL (postgresql+asyncpg://)."
        )
    return parsed.render_as_string(hide_password=False)


#: The scheme and slashes of a URL (``postgresql://``, or ``postgresql:/`` with a slash missing).
_SCHEME = re.compile(r"[A-Za-z][\w+.-]*:/+")


def masked(url: str) -> str:
    """``url`` as typed, with what may be a password in it replaced by ``***``: for a URL SQLAlchemy cannot
    parse (``redacted`` needs one it can). Everything between the user name's ``:`` and the last ``@`` is
    masked; a malformed URL may lose a bit more than its password, never less."""
    front, at, back = url.rpartition("@")
    if not at:
        return url
    scheme = _SCHEME.match(front)
    start = scheme.end() if scheme else 0
    user, colon, _ = front[start:].partition(":")
    if not colon:
        return url
    return f"{front[:start]}{user}:***@{back}"


def redacted(url: str) -> str:
    """The URL to show people: the password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
