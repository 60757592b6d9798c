"""``dicomvec check-db --sink URL`` (alias ``check-iris``): is this database ready for a load?

One line per check, ✓ passed / ✗ failed / – not applicable: login, server version, VECTOR and
HNSW support at that version, schema (IRIS: namespace), the images table's columns, key and
vector length, rights to create tables and indexes, rows by Provider, rows with a zero or
wrong-length vector, the reports table, the vector index and whether the nearest-neighbour
query plan uses it. Exit status 0 when nothing failed, 1 on any ✗, 2 for a bad URL or option.
"""
from __future__ import annotations

import argparse

from dicomvec.commands.init_db import (BY_LENGTH, add_size_arguments, add_store_command,
                                       length_of, provider_from, sink_from)
from dicomvec.defaults import REPORTS_TABLE


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """``--reports-table`` and the vector length (``--dimension`` / ``--provider``)."""
    parser.add_argument("--reports-table", default=None,
                        help="reports table name, in --schema ("
                             + BY_LENGTH.format(name=REPORTS_TABLE) + ")")
    add_size_arguments(parser, expected=True)


def model_line(provider, dimension: int, sink) -> str:
    """Which model's rows and which table a command looks at: ``model: <EmbeddingModel>
    (<store_key>), table <schema.table>`` (``provider`` None: any model of that length)."""
    table = sink.images().dialect.qualified_table
    if provider is None:
        return f"model: any ({dimension}-d vectors), table {table}"
    return f"model: {provider.model} ({provider.store_key}), table {table}"


def register(subparsers) -> None:
    for name in ("check-db", "check-iris"):
        add_table_arguments(add_store_command(
            subparsers, name, "check a database before a load (one ✓/✗ line per check)"
            if name == "check-db" else "alias of check-db", __doc__, run))


def run(args, extra=None) -> int:
    from dicomvec.io.stores.health import run_checks
    provider = provider_from(args, extra or ())
    dimension = length_of(args, provider)
    sink = sink_from(args, dimension)
    print(model_line(provider, dimension, sink))
    checks = run_checks(sink, dimension, provider.store_key if provider else None)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.ok is False]
    print(f"{len(failed)} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0
