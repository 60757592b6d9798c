"""Streaming mode: files copied into the watched folder during the run are stored, none read
half-written, and the job stops by itself once idle."""
from __future__ import annotations

import shutil
import threading
import time

import pytest

from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import run_ingest

pytestmark = pytest.mark.slow

WATCH_INTERVAL = 2.0


def _write_slowly(source, target, chunks=8, pause=0.3):
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with open(target, "wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start:start + step])
            out.flush()
            time.sleep(pause)


def test_files_arriving_during_the_run_are_all_stored(real_cxr_dir, tmp_path, streaming_runner):
    watched = tmp_path / "incoming"
    watched.mkdir()
    shutil.copy(real_cxr_dir / "cr_mono2_jpeg_baseline_1024.dcm", watched / "first.dcm")
    arrivals = {}

    def arrive():
        time.sleep(3 * WATCH_INTERVAL)
        shutil.copy(real_cxr_dir / "cxr_mono1_implicit_440.dcm", watched / "copied.dcm")
        arrivals["copied.dcm"] = time.time()
        shutil.copy(real_cxr_dir / "dx_mono1_j2k_lossless_CORRUPT.dcm", watched / "bad.dcm")
        _write_slowly(real_cxr_dir / "cxr_mono1_j2k_lossy_1955x1841.dcm", watched / "slow.dcm")
        arrivals["slow.dcm"] = time.time()
        _write_slowly(real_cxr_dir / "dx_mono1_inverse_explicit_small.dcm",
                      watched / "slow2.dcm", chunks=4, pause=0.6)
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
        "--stop-after-idle", "8",
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
        # machine (measured 4.6-5.0 s here with a load of 5-7); 4 intervals + 2 s holds on a
        # loaded 2-core machine and still fails a file that is only stored at the end of the run
        # (+1 of the 2: CreatedAt is in whole seconds)
        assert stored_at - arrived <= 4 * WATCH_INTERVAL + 2, name
