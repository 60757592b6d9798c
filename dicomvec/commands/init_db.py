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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "init-db", help="create the vector table (idempotent)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    add_sink_arguments(parser)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--dimension", type=int, help=f"vector length (default {DEFAULT_DIMENSION})")
    size.add_argument("--provider", help="take the vector length from this embedding provider")
    parser.add_argument("--with-report-fk", action="store_true",
                        help="add FOREIGN KEY (StudyID) to <schema>.MIMICCXRReports if it exists")
    parser.set_defaults(func=run)


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
    from dicomvec.io.stores.dialects import redact_url
    try:
        dimension = dimension_from(args)
        with sink_from(args).images() as store:
            with_fk = store.init_schema(dimension, with_report_fk=args.with_report_fk)
            target = store.dialect.qualified_table
    except ValueError:
        raise  # bad URL, names, provider or password setting: the CLI prints it (exit 2)
    except Exception as exc:  # database errors: one line, never a traceback with secrets
        print(f"init-db failed for {redact_url(args.sink)}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    fk_note = " with FOREIGN KEY (StudyID)" if with_fk else ""
    if args.with_report_fk and not with_fk:
        fk_note = " without the foreign key (no reports table yet)"
    print(f"{target} ready in {redact_url(args.sink)}: VECTOR length {dimension}{fk_note}")
    return 0
