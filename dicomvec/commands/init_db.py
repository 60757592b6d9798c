"""``dicomvec init-db --sink URL [--dimension N | --provider NAME] [--with-report-fk]``

Creates the schema and the images table if they are missing (idempotent). The vector length is
``--dimension``, or the named provider's (``--provider nvclip`` → 1024; a provider's own flags,
such as its model, follow it), default 1024. The table is ``--table``, or the one of that length:
MIMICCXRImages for 1024-d, MIMICCXRImages<d> for any other length d.
``--with-report-fk`` adds the foreign key on StudyID to the reports table of the same length
(``<schema>.MIMICCXRReports`` / ``MIMICCXRReports<d>``) when that table exists (a warning says
so when it does not). Exit status 0 on success, 1 when the database refuses, 2 for a bad URL or
option.
"""
from __future__ import annotations

import argparse
import sys

from dicomvec.defaults import DIMENSION as DEFAULT_DIMENSION, IMAGES_TABLE, SCHEMA

#: how ``--table`` / ``--reports-table`` default (one rule: ``defaults.images_table``)
BY_LENGTH = "default: from the vector length, {name} for 1024-d, {name}<d> for any other d"

SINK_HELP = ("where vectors go: sqlite:///PATH.db | postgresql://USER@HOST:PORT/DB "
             "(password via PGPASSWORD or ~/.pgpass) | iris://USER@HOST:1972/NAMESPACE "
             "(password via DICOMVEC_IRIS_PASSWORD or DICOMVEC_IRIS_PASSWORD_FILE, never the URL)")


def add_sink_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sink``, ``--schema``, ``--table`` (shared by the store commands)."""
    parser.add_argument("--sink", required=True, help=SINK_HELP + " (required)")
    parser.add_argument("--schema", default=SCHEMA,
                        help="schema name (ignored by SQLite; default %(default)s)")
    parser.add_argument("--table", default=None,
                        help="images table name (" + BY_LENGTH.format(name=IMAGES_TABLE) + ")")


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


def add_size_arguments(parser: argparse.ArgumentParser, expected: bool = False) -> None:
    """``--dimension N`` or ``--provider NAME`` (then the provider's own flags may follow,
    e.g. its model): the vector length, and with it the default table names."""
    parser.set_defaults(passthrough=True)  # the provider's flags, checked by provider_from
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--dimension", type=int,
                      help=f"{'expected ' if expected else ''}vector length (default "
                           f"{DEFAULT_DIMENSION})")
    size.add_argument("--provider", help=f"take the {'expected ' if expected else ''}vector "
                      "length from this embedding provider (its flags, e.g. its model, may "
                      "follow)")


def register(subparsers) -> None:
    parser = add_store_command(subparsers, "init-db", "create the vector table (idempotent)",
                               __doc__, run)
    add_size_arguments(parser)
    parser.add_argument("--with-report-fk", action="store_true",
                        help="add FOREIGN KEY (StudyID) to the reports table of the same vector "
                             "length (<schema>.MIMICCXRReports for 1024-d) if it exists")


def sink_from(args, dimension: int = DEFAULT_DIMENSION):
    """The ``SinkConfig`` of the store commands' ``--sink``, ``--schema``, ``--table`` (and
    ``--reports-table``): a table not named is the one of ``dimension``-long vectors."""
    from dicomvec.io.stores import SinkConfig
    return SinkConfig.for_dimension(dimension, args.sink, args.schema, args.table,
                                    getattr(args, "reports_table", None))


def provider_from(args, extra=()):
    """The provider ``--provider`` names, built with its own flags from ``extra`` (e.g. its
    model); None without ``--provider``. Any other flag in ``extra`` is a ``UsageError``."""
    from dicomvec.commands.pipeline_flags import check_flags
    command = f"dicomvec {args.command}"
    own = getattr(args, "own_flags", ())
    if not getattr(args, "provider", None):
        if extra:
            check_flags(list(extra), command, dicomvec_only=True, own_flags=own)  # names it
            from dicomvec.errors import UsageError
            raise UsageError(f"{extra[0]} is a provider flag: it needs --provider NAME")
        return None
    from dicomvec.io.providers import create_provider
    if not extra:
        from dicomvec.io.providers.base import ProviderConfig
        return create_provider(ProviderConfig(args.provider))
    check_flags(list(extra), command, dicomvec_only=True, own_flags=own)
    from dicomvec.pipeline.options import DicomvecOptions
    options = DicomvecOptions(list(extra) + ["--provider", args.provider])
    return create_provider(options.provider_config())


def dimension_from(args, extra=()) -> int:
    """``--dimension``, or the vector length of ``--provider`` (with its flags in ``extra``),
    default 1024."""
    return length_of(args, provider_from(args, extra))  # stray flags: an error


def length_of(args, provider) -> int:
    """``--dimension``, else the provider's vector length, else 1024."""
    if args.dimension is not None:
        if args.dimension < 1:
            raise ValueError(f"--dimension must be positive, got {args.dimension}")
        return args.dimension
    return int(provider.dimension) if provider is not None else DEFAULT_DIMENSION


def run(args, extra=None) -> int:
    dimension = dimension_from(args, extra or ())
    return database_command("init-db", args, lambda: _init(args, dimension))


def _init(args, dimension: int) -> int:
    from dicomvec.io.stores.dialects import redact_url
    with sink_from(args, dimension).images() as store:
        with_fk = store.init_schema(dimension, with_report_fk=args.with_report_fk)
        target = store.dialect.qualified_table
    fk_note = " with FOREIGN KEY (StudyID)" if with_fk else ""
    if args.with_report_fk and not with_fk:
        fk_note = " without the foreign key (no reports table yet)"
    print(f"{target} ready in {redact_url(args.sink)}: VECTOR length {dimension}{fk_note}")
    return 0
