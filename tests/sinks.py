"""One way for a test to get a database: ``sink_url(kind, request, root)``, and the ``sink_url``
fixture (conftest) that gives each test a fresh one of every available kind.

``SINKS``: SQLite (a file under ``root``) and PostgreSQL + pgvector (a new database on the
session's ``postgres_server``, tests/pg_fixtures.py); ``WITH_IRIS`` adds InterSystems IRIS, which
runs only when ``DICOMVEC_IRIS_URL`` (and ``DICOMVEC_IRIS_PASSWORD``) point at a live server and
is skipped with the reason otherwise.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

SINKS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
WITH_IRIS = SINKS + [pytest.param("iris", marks=pytest.mark.iris)]
IRIS_SKIP = ("IRIS not run: no IRIS server can be installed here. Set DICOMVEC_IRIS_URL="
             "iris://USER@HOST:1972/NAMESPACE and DICOMVEC_IRIS_PASSWORD to run it live")


def iris_url() -> str:
    """``DICOMVEC_IRIS_URL``, or a skip saying how to set it."""
    url = os.environ.get("DICOMVEC_IRIS_URL")
    if not url:
        pytest.skip(IRIS_SKIP)
    check_iris_url(url)
    return url


def check_iris_url(url: str) -> None:
    """A DICOMVEC_IRIS_URL that is set but does not parse is a failure, never a skip."""
    from dicomvec.io.stores.dialects import dialect_for_url
    try:
        dialect = dialect_for_url(url, schema="DicomvecTest")
    except ValueError as exc:
        pytest.fail(f"DICOMVEC_IRIS_URL is set but does not parse: {exc}")
    if dialect.name != "iris":
        pytest.fail(f"DICOMVEC_IRIS_URL must be an iris:// URL, got a {dialect.name} URL")


def sink_url(kind: str, request, root: Path, name: str = "dicomvec",
             new_database: bool = True) -> str:
    """A sink URL of ``kind``: ``root/<name>.db`` (SQLite); a new database ``<name>_<random>``
    on the session's PostgreSQL (``new_database`` False: its default database); IRIS: the live
    server's URL."""
    if kind == "sqlite":
        return f"sqlite:///{root}/{name}.db"
    if kind == "iris":
        return iris_url()
    server = request.getfixturevalue("postgres_server")
    if not new_database:
        return server.url()
    return server.create_database(f"{name.lower()}_{uuid.uuid4().hex[:8]}")
