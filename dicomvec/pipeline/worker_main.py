"""Beam's SDK worker process for the local engine's ``multi_processing`` mode, with dicomvec's
log set-up: each worker prints its own log lines once, in dicomvec's format, dicomvec's at the
CLI's ``--log-level`` and Beam's at ``--beam-log-level`` (default ERROR: no harness chatter).

Started by ``local_engine.LocalRunner`` as ``python -m dicomvec.pipeline.worker_main``; the
levels come from the environment variable ``DICOMVEC_LOG_LEVELS`` ("<dicomvec>,<libraries>"),
which the CLI sets. Everything else is Beam's ``sdk_worker_main``.
"""
from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: "<dicomvec level>,<library level>" for the worker processes; the CLI sets it
LOG_LEVELS_ENV = "DICOMVEC_LOG_LEVELS"


class _LevelByOrigin(logging.Filter):
    """dicomvec's records from ``own`` up, everyone else's from ``library`` up."""

    def __init__(self, own: int, library: int):
        super().__init__()
        self.own, self.library = own, library

    def filter(self, record: logging.LogRecord) -> bool:
        mine = record.name == "dicomvec" or record.name.startswith("dicomvec.")
        return record.levelno >= (self.own if mine else self.library)


def configure_worker_logging(levels: str) -> None:
    """One stderr handler on the root logger, filtered by origin (the worker harness sets the
    root logger itself to INFO, so the filter, not the logger level, decides what is shown)."""
    own, _, library = (levels or "INFO,ERROR").partition(",")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_LevelByOrigin(logging.getLevelName(own.upper() or "INFO"),
                                     logging.getLevelName(library.upper() or "ERROR")))
    logging.getLogger().addHandler(handler)


def main() -> None:
    configure_worker_logging(os.environ.get(LOG_LEVELS_ENV, ""))
    from apache_beam.runners.worker import sdk_worker_main
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
