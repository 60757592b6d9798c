"""The ``dicomvec`` command: sub-commands are modules listed in ``COMMANDS``.

Each module exposes ``register(subparsers)``; its parser sets ``func(args, extra) -> int``.
Commands that set ``passthrough=True`` receive the remaining flags (dicomvec's pipeline flags
and Beam's) in ``extra``; they check them strictly (``dicomvec.commands.pipeline_flags``), so a
misspelled flag is an error. Expected user errors (a typo, a bad input pattern or sink, missing
credentials) print one plain line on stderr and exit 2 instead of a traceback.

Start-up is kept light: command modules import Beam, numpy and pydicom only inside the
functions that run, so ``--help`` answers without them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

COMMANDS = (
    "dicomvec.commands.run",
    "dicomvec.commands.reprocess",
    "dicomvec.commands.dead_letters",
    "dicomvec.commands.synth",
    "dicomvec.commands.init_db",
    "dicomvec.commands.create_index",
    "dicomvec.commands.check_db",
    "dicomvec.commands.migrate",
    "dicomvec.commands.check_nvclip",
    "dicomvec.commands.reports",
    "dicomvec.commands.search",
    "dicomvec.commands.serve",
)

from dicomvec.pipeline.worker_main import LOG_FORMAT, LOG_LEVELS_ENV


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reports a usage mistake as one line (no usage dump) and takes
    no abbreviations (``--cou`` is not ``--count``); sub-command parsers inherit it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_logging_arguments(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--log-level``, ``--beam-log-level``, ``-v``: on the top parser with defaults, on each
    sub-command with none (so ``dicomvec run -v`` and ``dicomvec -v run`` both work)."""
    group = parser.add_argument_group("logging")
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    group.add_argument("--log-level", "--log_level", default=default("INFO"),
                       help="level of dicomvec's own log (default: INFO)")
    group.add_argument("--beam-log-level", "--beam_log_level", default=default(None),
                       help="level of Beam's and other libraries' log (default: ERROR; "
                            "-v: WARNING, -vv: INFO)")
    group.add_argument("-v", "--verbose", action="count", default=default(0),
                       help="-v: show Beam's warnings; -vv: Beam's INFO log and dicomvec's DEBUG")


def build_parser() -> argparse.ArgumentParser:
    from dicomvec import __version__
    parser = OneLineParser(
        prog="dicomvec",
        description="Chest X-ray DICOM archive → vectors for cross-modal search (Apache Beam).",
        epilog="`dicomvec COMMAND --help` lists every option of a command with its default.")
    parser.add_argument("--version", action="version", version=f"dicomvec {__version__}")
    add_logging_arguments(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    for sub in set(subparsers.choices.values()):
        add_logging_arguments(sub, top=False)
        show_defaults(sub)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default: X)" to each option's help that does not mention its default yet (for
    nested sub-commands too): every ``--help`` shows every default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                show_defaults(sub)
            continue
        default = action.default
        if (not action.option_strings or action.help in (None, argparse.SUPPRESS)
                or default is None or default is False or default == argparse.SUPPRESS
                or action.nargs == 0
                or "default" in action.help.lower()):
            continue
        action.help += " (default: %(default)s)"


def log_levels(args: argparse.Namespace) -> tuple:
    """(dicomvec's level, the libraries' level) from ``--log-level``, ``--beam-log-level``,
    ``-v``."""
    own = str(args.log_level).upper()
    if args.verbose >= 2 and own == "INFO":
        own = "DEBUG"
    library = args.beam_log_level or {0: "ERROR", 1: "WARNING"}.get(args.verbose, "INFO")
    for name, level in (("--log-level", own), ("--beam-log-level", library)):
        if not isinstance(logging.getLevelName(str(level).upper()), int):
            from dicomvec.errors import UsageError
            raise UsageError(f"{name}: unknown level {level!r} (DEBUG, INFO, WARNING, ERROR)")
    return own, str(library).upper()


def configure_logging(own_level: str, library_level: str) -> None:
    """dicomvec's messages at ``own_level``, Beam's and other libraries' at ``library_level``;
    the same for Beam's worker processes (through ``LOG_LEVELS_ENV``)."""
    logging.basicConfig(level=library_level, format=LOG_FORMAT, force=True)
    logging.getLogger("dicomvec").setLevel(own_level)
    # Beam's local job service repeats each worker process's log line ("Worker: severity: ...");
    # the workers print their own (dicomvec.pipeline.worker_main), so the copy is dropped.
    relay = logging.getLogger("apache_beam.runners.portability.local_job_service")
    relay.setLevel(logging.CRITICAL if library_level != "DEBUG" else logging.DEBUG)
    os.environ[LOG_LEVELS_ENV] = f"{own_level},{library_level}"
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_beam_import_noise)


def _drop_beam_import_noise(record: logging.LogRecord) -> bool:
    """Beam logs "apitools not found" on the root logger at import; dicomvec uses no GCP."""
    return not str(record.msg).startswith("apitools not found")


def main(argv: Optional[List[str]] = None) -> int:
    logging.getLogger().addFilter(_drop_beam_import_noise)  # before --help-beam imports Beam
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]
    own_flags = [s for a in sub._actions for s in a.option_strings]
    if extra and not getattr(args, "passthrough", False):
        from dicomvec.commands.pipeline_flags import suggestion
        flag = next((e.split("=", 1)[0] for e in extra if e.startswith("-")), None)
        near = suggestion(flag, own_flags) if flag else None
        hint = f" (did you mean {near}?)" if near else ""
        what = f"unknown option {flag}{hint}" if flag else f"unexpected argument {extra[0]!r}"
        print(f"dicomvec {args.command}: error: {what}", file=sys.stderr)
        return 2
    args.own_flags = own_flags  # a passthrough command's "did you mean" offers them too
    try:
        configure_logging(*log_levels(args))
        return int(args.func(args, extra) or 0)
    except Exception as exc:
        from dicomvec.io.providers.base import FatalProviderError, TextNotSupportedError
        from dicomvec.pipeline.job_monitor import JobFailed, JobInterrupted
        if isinstance(exc, JobInterrupted):  # SIGINT/SIGTERM: the job was cancelled, not finished
            print(f"dicomvec: {exc}", file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, JobFailed):  # the runner failed the job: what it said, in one line
            print(f"dicomvec: error: {exc}", file=sys.stderr)
            return exc.exit_code
        # one line: ValueError covers UserError, unknown providers, bad sink URLs and
        # identifiers; plus the provider's fatal errors
        if not isinstance(exc, (ValueError, FatalProviderError, TextNotSupportedError)):
            raise
        print(f"dicomvec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
