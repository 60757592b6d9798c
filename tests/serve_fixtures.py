"""A small archive for the search page, and `dicomvec serve` in a subprocess.

``fill_archive(root, sink)`` writes synthetic DICOMs (``dicomvec.synthetic.generate``), stores a
row per image (``tests.store_rows.make_row``) whose vector is the thumbnail provider's embedding
of the file taken through the query path (so a stored image queried with itself scores 1.0),
reports for all studies but the last, and one row whose file is gone (``MISSING_ID``).

``Server(flags)`` starts ``dicomvec serve --port 0 FLAGS`` and reads the URL it prints.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from dicomvec.io.providers import create_provider
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.io.stores import SinkConfig
from dicomvec.search.queries import embed_query_image, image_record
from dicomvec.synthetic import generate
from tests.store_rows import make_report_row, make_row

REPO = Path(__file__).resolve().parents[1]
COUNT = 8
SIZE = (256, 212)
MISSING_ID = "gone-0000-missing-file"
IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class Stored:
    image_id: str
    subject: str
    study: str
    view: str
    path: str
    impression: Optional[str]


def impression_of(study: str) -> str:
    return f"Impression for study {study}: small left pleural effusion."


def fill_archive(root: Path, sink: str, count: int = COUNT) -> List[Stored]:
    files = [f for f in generate(root / "sample", count, size=SIZE,
                                 syntaxes=("native", "rle"), seed=23) if not f.broken]
    provider = create_provider(DicomvecOptions(serve_flags(sink)).provider_config())
    provider.setup()
    config = SinkConfig(url=sink)
    stored, rows = [], []
    studies = sorted({f.study_id for f in files})
    reported = set(studies[:-1])  # the last study has no report
    for index, f in enumerate(files):
        record = image_record(f.path, IMAGE_SIZE, "standard", "png")
        vector = embed_query_image(provider, record)
        rows.append(make_row(index, provider="thumbnail", view=f.view_position, vector=vector,
                             SubjectID=f.subject_id, StudyID=f.study_id, ImageID=f.dicom_id,
                             ImagePath=f.path, DicomFile=os.path.basename(f.path),
                             EmbeddingModel=provider.model))
        stored.append(Stored(f.dicom_id, f.subject_id, f.study_id, f.view_position, f.path,
                             impression_of(f.study_id) if f.study_id in reported else None))
    gone = str(root / "sample" / "files" / "p10" / "p10000000" / "s50000000" / "gone.dcm")
    rows.append(make_row(len(files), provider="thumbnail", view="", vector=rows[0].Vector,
                         ImageID=MISSING_ID, ImagePath=gone, DicomFile="gone.dcm",
                         EmbeddingModel=provider.model))
    with config.reports() as reports:
        reports.init_schema(1024)
        subjects = {f.study_id: f.subject_id for f in files}
        assert reports.upsert([make_report_row(s, None, SubjectID=subjects[s],
                                               Impression=impression_of(s),
                                               Findings=f"Findings of study {s}.")
                               for s in sorted(reported)]) == []
    with config.images() as images:
        images.init_schema(1024)
        assert images.upsert(rows) == []
    return stored


def serve_flags(sink: str) -> List[str]:
    return ["--sink", sink, "--provider", "thumbnail", "--image-size", str(IMAGE_SIZE)]


class Server:
    """``dicomvec serve --port 0 *flags`` in a subprocess; ``url`` as printed (with the token
    when there is one), ``base`` without it."""

    def __init__(self, flags: List[str], cwd: Optional[Path] = None, env: Optional[dict] = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicomvec.cli", "serve", "--port", "0", *flags],
            cwd=cwd or REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        line = self.process.stdout.readline()
        match = re.match(r"dicomvec serve: (http://[^/\s]+/)(\?token=(\S+))?", line)
        if not match:
            self.stop()
            raise AssertionError(f"dicomvec serve did not start: {line!r} "
                                 f"{self.process.stderr.read()[-3000:]}")
        self.base = match.group(1)
        self.token = match.group(3)
        self.url = line.split(": ", 1)[1].strip()
        self.banner = line + self.process.stdout.readline()
        self.port = int(self.base.rstrip("/").rsplit(":", 1)[1])

    def local(self, path: str = "") -> str:
        """``http://127.0.0.1:PORT/path``."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def stop(self) -> str:
        """Stops the server (SIGINT, as Ctrl-C); returns its stderr."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        err = self.process.stderr.read() if self.process.stderr else ""
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
        return err


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
