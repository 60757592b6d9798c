"""``dicomvec create-index --sink URL``: build the HNSW vector index after a bulk load.

IRIS 2025.1+: ``CREATE INDEX ... AS HNSW(Distance='Cosine')`` (older servers get a clear
message; search still works as an exact scan). PostgreSQL: pgvector ``USING hnsw
(Vector vector_cosine_ops)``. SQLite: no index (search is an exact numpy scan). Idempotent.
Exit status 0 on success, 1 when the database refuses, 2 for a bad URL or option.
"""
from __future__ import annotations

import argparse
import sys
import time

from dicomvec.commands.init_db import add_sink_arguments, sink_from


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "create-index", help="build the HNSW vector index (after a bulk load)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    add_sink_arguments(parser)
    parser.set_defaults(func=run)


def run(args, extra=None) -> int:
    from dicomvec.io.stores.dialects import redact_url
    started = time.monotonic()
    try:
        with sink_from(args).images() as store:
            statements = store.dialect.create_index_statements()
            store.create_index()
            rows = store.count()
    except ValueError:
        raise  # bad URL, names or password setting: the CLI prints it (exit 2)
    except Exception as exc:  # database errors (old IRIS, ...): one line
        print(f"create-index failed for {redact_url(args.sink)}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    if not statements:
        print(f"{redact_url(args.sink)}: no vector index for this database "
              "(search is an exact scan)")
    else:
        print(f"vector index ready on {store.dialect.qualified_table} ({rows} rows) in "
              f"{time.monotonic() - started:.1f}s")
    return 0
