"""Streaming mode: files copied into the watched folder during the run are stored, none read
half-written, and the job stops by itself once idle. Core behaviour on generated DICOMs; the
same scenario on real radiographs from ../shared when they are present."""
from __future__ import annotations

import shutil
import threading
import time

from pathlib import Path

import pytest

from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import run_ingest
from dicomvec.synthetic import generate

pytestmark = pytest.mark.slow

WATCH_INTERVAL = 2.0
STOP_AFTER_IDLE = 16
LATENCY_BOUND = 4 * WATCH_INTERVAL + 2  # < STOP_AFTER_IDLE: a file stored only at the end fails


def _write_slowly(source, target, chunks=8, pause=0.3):
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with open(target, "wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start:start + step])
            out.flush()
            time.sleep(pause)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Synthetic DICOMs (three transfer syntaxes, MIMIC layout) and one with truncated pixel
    data, made by the project's generator: a fresh clone has everything this test needs."""
    root = tmp_path_factory.mktemp("generated")
    files = generate(root, 4, size=(512, 512), syntaxes=("native", "j2k", "rle"), broken=1,
                     seed=11)
    good = [Path(f.path) for f in files if not f.broken]
    bad = next(Path(f.path) for f in files if f.broken == "truncated")
    return {"first": good[0], "copied": good[1], "bad": bad, "slow": good[2],
            "slow2": good[3]}


@pytest.fixture(scope="module")
def real_files(real_cxr_dir):
    """The same roles played by real radiographs from ../shared (extra realism)."""
    return {"first": real_cxr_dir / "cr_mono2_jpeg_baseline_1024.dcm",
            "copied": real_cxr_dir / "cxr_mono1_implicit_440.dcm",
            "bad": real_cxr_dir / "dx_mono1_j2k_lossless_CORRUPT.dcm",
            "slow": real_cxr_dir / "cxr_mono1_j2k_lossy_1955x1841.dcm",
            "slow2": real_cxr_dir / "dx_mono1_inverse_explicit_small.dcm"}


def test_files_arriving_during_the_run_are_all_stored(generated, tmp_path, streaming_runner):
    check_files_arriving(generated, tmp_path, streaming_runner)


def test_real_files_arriving_during_the_run_are_all_stored(real_files, tmp_path,
                                                           streaming_runner):
    check_files_arriving(real_files, tmp_path, streaming_runner)


def check_files_arriving(source, tmp_path, streaming_runner):
    watched = tmp_path / "incoming"
    watched.mkdir()
    shutil.copy(source["first"], watched / "first.dcm")
    arrivals = {}

    def arrive():
        time.sleep(3 * WATCH_INTERVAL)
        shutil.copy(source["copied"], watched / "copied.dcm")
        arrivals["copied.dcm"] = time.time()
        shutil.copy(source["bad"], watched / "bad.dcm")
        _write_slowly(source["slow"], watched / "slow.dcm")
        arrivals["slow.dcm"] = time.time()
        _write_slowly(source["slow2"], watched / "slow2.dcm", chunks=4, pause=0.6)
        arrivals["slow2.dcm"] = time.time()

    writer = threading.Thread(target=arrive)
    writer.start()
    summary = run_ingest([
        "--input", str(watched / "*.dcm"),
        "--sink", f"sqlite:///{tmp_path}/db.sqlite",
        "--dead-letter", str(tmp_path / "dl"),
        "--provider", "thumbnail", "--run-id", "stream",
        "--streaming", *streaming_runner,
        "--watch-interval", str(WATCH_INTERVAL),
        "--dead-letter-frequency", "2",
        "--stop-after-idle", str(STOP_AFTER_IDLE),
    ])
    writer.join()
    # only the corrupt file is dead-lettered: nothing was read half-written
    dead = read_dead_letters(str(tmp_path / "dl"))
    assert [(row["stage"], row["path"].rsplit("/", 1)[-1]) for row in dead] == [
        ("decode", "bad.dcm")]
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        rows = dict(store.conn.execute("SELECT DicomFile, CreatedAt FROM MIMICCXRImages"))
    assert set(rows) == {"first.dcm", "copied.dcm", "slow.dcm", "slow2.dcm"}
    assert summary.stored == 4
    for name, arrived in arrivals.items():
        stored_at = time.mktime(time.strptime(rows[name], "%Y-%m-%d %H:%M:%S")) - time.timezone
        # a listing period + the settle time + the batch wait is 2.5 intervals on an idle
        # machine (4.6-6.1 s measured with a load of 5-7); the bound leaves room for a loaded
        # 2-core machine and stays below STOP_AFTER_IDLE, so a file stored only at the end of
        # the run fails (+1: CreatedAt is in whole seconds)
        assert stored_at - arrived <= LATENCY_BOUND + 1, name


def test_a_listing_passes_on_only_new_or_changed_files():
    """What flows on per listing is what arrived or changed, not the whole archive again; the
    worker keeps one small entry per file."""
    from apache_beam.io.filesystem import FileMetadata
    from dicomvec.transforms.watch import DropUnchangedSinceLastListing
    dofn = DropUnchangedSinceLastListing()
    dofn.setup()

    def listing(*files):
        return [m.path for f in files for m in dofn.process(FileMetadata(*f))]

    a, b = ("/w/a.dcm", 10, 1.0), ("/w/b.dcm", 20, 1.0)
    assert listing(a, b) == ["/w/a.dcm", "/w/b.dcm"]
    assert listing(a, b) == []                                   # listed again: nothing new
    assert listing(a, ("/w/b.dcm", 25, 2.0)) == ["/w/b.dcm"]     # b grew
    assert listing(a, ("/w/b.dcm", 25, 2.0), ("/w/c.dcm", 5, 3.0)) == ["/w/c.dcm"]
    assert len(dofn._passed) == 3
