"""``dicomvec create-index --sink URL``: build the HNSW vector index after a bulk load.

The images table of --dimension / --provider's vector length (MIMICCXRImages for 1024-d,
MIMICCXRImages<d> otherwise), or --table.

IRIS 2025.1+: ``CREATE INDEX ... AS HNSW(Distance='Cosine')`` (older servers get a clear
message; search still works as an exact scan). PostgreSQL: pgvector ``USING hnsw
(Vector vector_cosine_ops)``. SQLite: the IVF index files beside the database, one per provider
(``io/stores/sqlite_index.py``; a search also builds and syncs them by itself on tables of
2,000 rows or more). Idempotent.
Exit status 0 on success, 1 when the database refuses, 2 for a bad URL or option.
"""
from __future__ import annotations

import time

from dicomvec.commands.init_db import (add_size_arguments, add_store_command, database_command,
                                       dimension_from, sink_from)


def register(subparsers) -> None:
    add_size_arguments(add_store_command(
        subparsers, "create-index", "build the HNSW vector index (after a bulk load)", __doc__,
        run))


def run(args, extra=None) -> int:
    dimension = dimension_from(args, extra or ())
    return database_command("create-index", args, lambda: _create(args, dimension))


def _create(args, dimension: int) -> int:
    from dicomvec.io.stores.dialects import redact_url
    started = time.monotonic()
    with sink_from(args, dimension).images() as store:  # database errors (old IRIS, ...): one line
        statements = store.dialect.create_index_statements()
        side = store.create_index()
        rows = store.count()
    for line in side:
        print(f"vector index {line}")
    if not statements and not side:
        print(f"{redact_url(args.sink)}: no vector index for this database "
              "(search is an exact scan)")
    elif statements:
        print(f"vector index ready on {store.dialect.qualified_table} ({rows} rows) in "
              f"{time.monotonic() - started:.1f}s")
    return 0
