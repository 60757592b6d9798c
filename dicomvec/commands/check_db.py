"""``dicomvec check-db --sink URL`` (alias ``check-iris``): is this database ready for a load?

One line per check, ✓ passed / ✗ failed / – not applicable: login, server version, VECTOR and
HNSW support at that version, schema (IRIS: namespace), the images table's columns, key and
vector length, rights to create tables and indexes, rows by Provider, rows with a zero or
wrong-length vector, the reports table, the vector index and whether the nearest-neighbour
query plan uses it. Exit status 0 when nothing failed, 1 on any ✗, 2 for a bad URL or option.
"""
from __future__ import annotations

import argparse

from dicomvec.commands.init_db import (DEFAULT_DIMENSION, add_store_command, dimension_from,
                                       sink_from)
from dicomvec.defaults import REPORTS_TABLE


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """``--reports-table`` and the vector length (``--dimension`` / ``--provider``)."""
    parser.add_argument("--reports-table", default=REPORTS_TABLE,
                        help="reports table name, in --schema (default %(default)s)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--dimension", type=int,
                      help=f"expected vector length (default {DEFAULT_DIMENSION})")
    size.add_argument("--provider", help="take the expected vector length from this provider")


def register(subparsers) -> None:
    for name in ("check-db", "check-iris"):
        add_table_arguments(add_store_command(
            subparsers, name, "check a database before a load (one ✓/✗ line per check)"
            if name == "check-db" else "alias of check-db", __doc__, run))


def run(args, extra=None) -> int:
    from dicomvec.io.stores.health import run_checks
    dimension = dimension_from(args)
    checks = run_checks(sink_from(args), dimension)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.ok is False]
    print(f"{len(failed)} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0
