"""The flags of a local run with the offline ``thumbnail`` provider, built in one place."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union


def thumbnail_flags(root: Union[str, Path], run_id: Optional[str] = None, *extra: str,
                    input: Optional[str] = None, sink: Optional[str] = None,
                    dead_letter: Union[str, Path, None] = None,
                    batch_size: Optional[int] = None) -> List[str]:
    """``[--input PATTERN] --sink sqlite:///ROOT/db.sqlite --dead-letter ROOT/dl --provider
    thumbnail [--run-id ID] [--batch-size N] EXTRA...`` (``sink``, ``dead_letter``: others)."""
    flags = ["--input", str(input)] if input is not None else []
    flags += ["--sink", sink or f"sqlite:///{root}/db.sqlite",
              "--dead-letter", str(dead_letter or Path(root) / "dl"), "--provider", "thumbnail"]
    if run_id is not None:
        flags += ["--run-id", run_id]
    if batch_size is not None:
        flags += ["--batch-size", str(batch_size)]
    return flags + list(extra)
