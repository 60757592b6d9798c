"""The ``dicomvec`` command: sub-commands are modules listed in ``COMMANDS``.

Each module exposes ``register(subparsers)``; its parser sets ``func(args, extra) -> int``.
Commands that set ``passthrough=True`` receive the unparsed flags (Beam options) in ``extra``.
Expected user errors (bad input pattern, bad sink URL, fatal provider errors) print one plain
line and exit 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

COMMANDS = (
    "dicomvec.commands.run",
    "dicomvec.commands.reprocess",
    "dicomvec.commands.dead_letters",
    "dicomvec.commands.synth",
    "dicomvec.commands.init_db",
    "dicomvec.commands.create_index",
    "dicomvec.commands.check_nvclip",
    "dicomvec.commands.reports",
    "dicomvec.commands.search",
)


def build_parser() -> argparse.ArgumentParser:
    from dicomvec import __version__
    parser = argparse.ArgumentParser(
        prog="dicomvec",
        description="Chest X-ray DICOM archive → vectors for cross-modal search (Apache Beam).")
    parser.add_argument("--version", action="version", version=f"dicomvec {__version__}")
    parser.add_argument("--log-level", default="INFO", help="level for dicomvec's own log")
    parser.add_argument("--beam-log-level", default="WARNING",
                        help="level for Beam and other libraries")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def configure_logging(own_level: str, library_level: str) -> None:
    """dicomvec's messages at ``own_level``; Beam's chatty worker logs at ``library_level``."""
    logging.basicConfig(level=getattr(logging, library_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("dicomvec").setLevel(getattr(logging, own_level.upper(), logging.INFO))


def _drop_beam_import_noise(record: logging.LogRecord) -> bool:
    """Beam logs "apitools not found" on the root logger at import; dicomvec uses no GCP."""
    return not str(record.msg).startswith("apitools not found")


def main(argv: Optional[List[str]] = None) -> int:
    logging.getLogger().addFilter(_drop_beam_import_noise)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    configure_logging(args.log_level, args.beam_log_level)
    from dicomvec.errors import USER_ERRORS
    from dicomvec.pipeline.job_monitor import JobInterrupted
    try:
        return int(args.func(args, extra) or 0)
    except USER_ERRORS as exc:
        print(f"dicomvec: error: {exc}", file=sys.stderr)
        return 2
    except JobInterrupted as exc:  # SIGINT/SIGTERM: the job was cancelled, not finished
        print(f"dicomvec: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
