"""``dicomvec migrate --sink URL [--apply]``: upgrade tables made by an older dicomvec.

Compares the images table (and the reports table) with what this dicomvec writes and prints the
DDL that upgrades it: ADD COLUMN for a missing nullable column (e.g. PreprocessVersion),
widening of narrower VARCHAR columns (e.g. VARCHAR(50) IDs → VARCHAR(64); not needed on SQLite).
Dry run by default; --apply runs the statements. Idempotent: an up-to-date table needs nothing.
A table that is not a dicomvec table (another key or vector length) is left alone and named.
Rows keep their data; rows from before PreprocessVersion existed count as already stored by
`run` (--force re-embeds them). Exit status 0 when nothing is left to do (or, dry run, the plan
is printed), 1 when the database refuses, 2 for a bad URL or option. The tables are those of
--dimension / --provider's vector length (MIMICCXRImages and MIMICCXRReports for 1024-d,
MIMICCXRImages<d> and MIMICCXRReports<d> otherwise), or --table / --reports-table.
"""
from __future__ import annotations

from dicomvec.commands.check_db import add_table_arguments
from dicomvec.commands.init_db import (add_store_command, database_command, dimension_from,
                                       sink_from)


def register(subparsers) -> None:
    parser = add_store_command(subparsers, "migrate", "upgrade tables made by an older dicomvec "
                               "(dry run by default)", __doc__, run)
    add_table_arguments(parser)
    parser.add_argument("--apply", action="store_true",
                        help="run the statements (default: print them only)")


def plan(store, dimension: int):
    """(statements, note): the upgrade of ``store``'s table, or why there is none."""
    from dicomvec.io.stores import schema_check
    table = store.dialect.qualified_table
    shape = store.shape()
    if shape is None:
        return [], f"{table}: does not exist (nothing to migrate)"
    differences = schema_check.compare(store.spec, shape, dimension,
                                       store.dialect.enforces_varchar_length)
    if not differences:
        return [], f"{table}: up to date"
    if not all(d.migratable for d in differences):
        listed = "; ".join(d.text for d in differences if not d.migratable)
        return [], (f"{table}: left alone, not a dicomvec table ({listed}); use "
                    f"{schema_check.table_option(store.spec)} NAME for a table of our own")
    statements = schema_check.migration_statements(store.dialect, differences, dimension)
    listed = "; ".join(d.text for d in differences)
    return statements, f"{table}: needs migrating ({listed})"


def run(args, extra=None) -> int:
    dimension = dimension_from(args, extra or ())
    return database_command("migrate", args, lambda: _migrate(args, dimension))


def _migrate(args, dimension: int) -> int:
    sink = sink_from(args, dimension)
    pending = 0
    for store in (sink.images(), sink.reports()):
        with store:
            statements, note = plan(store, dimension)
            print(note)
            for statement in statements:
                print(f"  {statement};")
            if statements and args.apply:
                store.migrate(statements)  # then checks the upgraded table is ours
                print(f"  applied {len(statements)} statement(s)")
            elif statements:
                pending += len(statements)
    if pending:
        print(f"dry run: {pending} statement(s) not run; add --apply to run them")
    return 0
