"""``dicomvec init-db --sink URL [--dimension N | --provider NAME] [--with-report-fk]``

Creates the schema and the images table if they are missing (idempotent). The vector length is
``--dimension``, or the named provider's (``--provider nvclip`` → 1024), default 1024.
``--with-report-fk`` adds the foreign key on StudyID to ``<schema>.MIMICCXRReports`` when that
table exists (a warning says so when it does not). Exit status 0 on success, 1 when the
database refuses, 2 for a bad URL or option.
"""
from __future__ import annotations

import argparse
import sys

from dicomvec.defaults import DIMENSION as DEFAULT_DIMENSION, IMAGES_TABLE, SCHEMA

SINK_HELP = ("where vectors go: sqlite:///PATH.db | postgresql://USER@HOST:PORT/DB "
             "(password via PGPASSWORD or ~/.pgpass) | iris://USER@HOST:1972/NAMESPACE "
             "(password via DICOMVEC_IRIS_PASSWORD or DICOMVEC_IRIS_PASSWORD_FILE, never the URL)")


def add_sink_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sink``, ``--schema``, ``--table`` (shared by the store commands)."""
    parser.add_argument("--sink", required=True, help=SINK_HELP + " (required)")
    parser.add_argument("--schema", default=SCHEMA,
                        help="schema name (ignored by SQLite; default %(default)s)")
    parser.add_argument("--table", default=IMAGES_TABLE, help="table name (default %(default)s)")


def add_store_command(subparsers, name: str, summary: str, doc: str, run):
    """A store command's parser: its module docstring (after the first paragraph) as the
    description, ``--sink``, ``--schema``, ``--table``, then ``run``."""
    parser = subparsers.add_parser(name, help=summary, description=doc.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawTextHelpFormatter)
    add_sink_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def database_command(name: str, args, body) -> int:
    """``body()``'s exit status; a database error is one line on stderr and status 1 (a bad
    URL, name, provider or password setting raises ValueError: the CLI's one line, exit 2)."""
    from dicomvec.io.stores.dialects import redact_url
    try:
        return body()
    except ValueError:
        raise
    except Exception as exc:  # never a traceback with secrets
        print(f"{name} failed for {redact_url(args.sink)}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1


def register(subparsers) -> None:
    parser = add_store_command(subparsers, "init-db", "create the vector table (idempotent)",
                               __doc__, run)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--dimension", type=int, help=f"vector length (default {DEFAULT_DIMENSION})")
    size.add_argument("--provider", help="take the vector length from this embedding provider")
    parser.add_argument("--with-report-fk", action="store_true",
                        help="add FOREIGN KEY (StudyID) to <schema>.MIMICCXRReports if it exists")


def sink_from(args):
    """The ``SinkConfig`` of the store commands' ``--sink``, ``--schema``, ``--table`` (and
    ``--reports-table``)."""
    from dicomvec.io.stores import SinkConfig
    reports = getattr(args, "reports_table", None)
    return SinkConfig(args.sink, args.schema, args.table,
                      **({"reports_table": reports} if reports else {}))


def dimension_from(args) -> int:
    if args.dimension is not None:
        if args.dimension < 1:
            raise ValueError(f"--dimension must be positive, got {args.dimension}")
        return args.dimension
    if args.provider:
        from dicomvec.io.providers.base import ProviderConfig
        from dicomvec.io.providers.registry import provider_class
        return int(provider_class(args.provider)(ProviderConfig(args.provider)).dimension)
    return DEFAULT_DIMENSION


def run(args, extra=None) -> int:
    return database_command("init-db", args, lambda: _init(args))


def _init(args) -> int:
    from dicomvec.io.stores.dialects import redact_url
    dimension = dimension_from(args)
    with sink_from(args).images() as store:
        with_fk = store.init_schema(dimension, with_report_fk=args.with_report_fk)
        target = store.dialect.qualified_table
    fk_note = " with FOREIGN KEY (StudyID)" if with_fk else ""
    if args.with_report_fk and not with_fk:
        fk_note = " without the foreign key (no reports table yet)"
    print(f"{target} ready in {redact_url(args.sink)}: VECTOR length {dimension}{fk_note}")
    return 0
