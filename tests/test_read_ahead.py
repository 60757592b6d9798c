"""The object-storage read-ahead (``dicomvec.io.prefetch``): order, bounds, and failure
semantics — a failed object read is that image's ``read`` dead letter (retryable when the error
is transient), the other images go on, outputs keep their own windowing."""
from __future__ import annotations

import threading
import time

import pytest
from apache_beam.utils.windowed_value import WindowedValue
from apache_beam.transforms.window import GlobalWindow

from dicomvec.io.prefetch import ReadAhead, thread_pool
from dicomvec.record import ImageRecord
from dicomvec.transforms.preprocess import DecodePixels


def test_window_keeps_arrival_order_and_its_bounds():
    pool = thread_pool(8)
    running, peak, lock = [0], [0], threading.Lock()

    def fetch(i):
        def run():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.02 * (5 - i % 5))  # later elements often finish first
            with lock:
                running[0] -= 1
            if i == 3:
                raise OSError("gone")
            return bytes([i])
        return run

    window = ReadAhead(pool, max_items=4, max_bytes=10 * 100)
    out = []
    for i in range(12):
        out.extend(window.push(i, fetch(i), 100))
        assert len(window) <= 4 and window.bytes_in_window <= 1000
    out.extend(window.drain())
    assert [item for item, _, _ in out] == list(range(12))
    assert [type(error).__name__ if error else data for _, data, error in out][3] == "OSError"
    assert all(data == bytes([i]) for i, data, error in out if i != 3)
    assert 1 < peak[0] <= 4  # fetches overlapped, never more than the window
    # the byte bound: 3 elements of 400 fit in 1000 → at most 2 in the window
    window = ReadAhead(pool, max_items=16, max_bytes=1000)
    for i in range(6):
        list(window.push(i, lambda: b"", 400))
        assert window.bytes_in_window <= 1000
    assert window.peak_items == 2
    # one element larger than the whole budget still gets in (alone)
    window = ReadAhead(pool, max_items=16, max_bytes=10)
    assert list(window.push("big", lambda: b"x", 1000)) == []
    assert [item for item, _, _ in window.push("next", lambda: b"", 1)] == ["big"]
    pool.shutdown()


def test_decode_with_read_ahead_dead_letters_failed_reads(s3_env):
    """Against the real S3 server: good objects decode, a missing object is a non-retryable
    ``read`` dead letter, a non-DICOM object a ``decode`` dead letter, in arrival order, each
    output with its own element's timestamp and window."""
    sample = s3_env
    from dicomvec.io.object_storage import s3_settings
    from apache_beam.options.pipeline_options import PipelineOptions
    settings = s3_settings(PipelineOptions(sample.flags()))
    dofn = DecodePixels(64, settings, read_ahead=(3, 64 << 20))
    dofn.setup()
    dofn.start_bundle()
    good = [f for f in sample.synthetic if not f.broken]
    not_dicom = next(f for f in sample.synthetic if f.broken == "not-dicom")
    paths = ([sample.s3_path(f.path) for f in good[:2]]
             + [f"s3://{sample.bucket}/files/missing/nothing.dcm",
                sample.s3_path(not_dicom.path)]
             + [sample.s3_path(f.path) for f in good[2:4]])
    outputs = []
    for index, path in enumerate(paths):
        outputs += list(dofn.process(ImageRecord(path=path, image_id=f"id{index}"),
                                     timestamp=index, window=GlobalWindow()))
    outputs += list(dofn.finish_bundle())
    dofn.teardown()
    seen = []
    for output in outputs:
        tag = getattr(output, "tag", None)
        value = output.value if tag else output
        assert isinstance(value, WindowedValue)
        seen.append((tag, value.value.path, int(value.timestamp)))
    assert [path for _, path, _ in seen] == paths  # arrival order
    assert [ts for _, _, ts in seen] == list(range(len(paths)))  # each keeps its timestamp
    failures = {path: getattr(o, "value").value for o, (_, path, _) in zip(outputs, seen)
                if getattr(o, "tag", None)}
    missing = failures[paths[2]]
    assert missing.stage == "read" and not missing.retryable and "NoSuchKey" in \
        missing.error_message
    assert failures[paths[3]].stage == "decode"
    assert len(failures) == 2


@pytest.mark.slow
def test_a_dropped_connection_is_a_retryable_read_dead_letter(s3_env, monkeypatch):
    """The S3 server behind toxiproxy; the proxy refuses connections: the read fails (after
    botocore's own attempts) as a ``read`` dead letter marked retryable."""
    from tests.bucket_tools import Toxiproxy, require_tool
    require_tool("toxiproxy-server")
    sample = s3_env
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with Toxiproxy() as proxy:
        listen = proxy.proxy("s3", sample.server.endpoint.split("://", 1)[1])
        proxy.enable("s3", False)
        settings = {"s3_endpoint_url": f"http://{listen}", "s3_region_name": "us-east-1"}
        dofn = DecodePixels(64, settings, read_ahead=(2, 64 << 20))
        dofn.setup()
        dofn.start_bundle()
        good = next(f for f in sample.synthetic if not f.broken)
        outputs = list(dofn.process(ImageRecord(path=sample.s3_path(good.path), image_id="x"),
                                    timestamp=0, window=GlobalWindow()))
        outputs += list(dofn.finish_bundle())
        dofn.teardown()
    (failure,) = [o.value.value for o in outputs]
    assert failure.stage == "read" and failure.retryable


@pytest.mark.slow
def test_run_through_a_slow_network_gives_the_same_rows(s3_env, tmp_path):
    """``dicomvec run`` over the bucket through toxiproxy (50 ms first byte, 85 MB/s per
    connection) with the read-ahead: the same counts and vectors as straight from the server,
    and the accounting adds up."""
    from tests.bucket_tools import Toxiproxy, require_tool
    from tests.test_s3 import _argv, _vectors
    from tests.s3_fixtures import SYNTH_BROKEN, SYNTH_COUNT
    from dicomvec.pipeline.run import run_ingest
    require_tool("toxiproxy-server")
    sample = s3_env
    direct = run_ingest(_argv(sample.synthetic_pattern, tmp_path, "direct", sample, db="d"))
    with Toxiproxy() as proxy:
        listen = proxy.proxy("s3", sample.server.endpoint.split("://", 1)[1])
        proxy.network("s3", latency_ms=50, rate_mb_s=85)
        slow = run_ingest(["--input", sample.synthetic_pattern,
                           "--sink", f"sqlite:///{tmp_path}/s.sqlite",
                           "--dead-letter", str(tmp_path / "dl"), "--provider", "thumbnail",
                           "--run-id", "slow", "--batch-size", "4",
                           "--s3_endpoint_url", f"http://{listen}",
                           "--s3_region_name", "us-east-1", "--prefetch_objects", "4"])
    for summary in (direct, slow):
        assert summary.stored == SYNTH_COUNT
        assert summary.dead_lettered_total == SYNTH_BROKEN
        assert summary.accounting.holds
    assert _vectors(tmp_path, "d")[0].keys() == _vectors(tmp_path, "s")[0].keys()


def _ranged_read_cases(fetcher, path, data):
    """``whole`` in parallel ranges: the same bytes; a listed size that is stale (the object
    shrank or grew since the listing) falls back to one whole GET, same bytes; a missing object
    is a non-retryable read error."""
    from dicomvec.io.remote import MAX_PARTS, PART_BYTES, ObjectReadError
    assert len(data) >= 2 * PART_BYTES
    assert bytes(fetcher.whole(path, len(data))) == data
    assert bytes(fetcher.whole(path, len(data) - 3 * PART_BYTES // 2)) == data  # grew
    assert bytes(fetcher.whole(path, len(data) + 12345)) == data                # shrank
    assert bytes(fetcher.whole(path)) == data                                   # no size: one GET
    with pytest.raises(ObjectReadError) as caught:
        fetcher.whole(path + ".missing", len(data))
    assert not caught.value.retryable
    assert MAX_PARTS > 1


def test_whole_object_in_parallel_ranges_on_s3(s3_env):
    import os
    from apache_beam.options.pipeline_options import PipelineOptions
    from dicomvec.io.object_storage import s3_settings
    from dicomvec.io.remote import PART_BYTES, ObjectFetcher
    sample = s3_env
    data = os.urandom(3 * PART_BYTES + 777)
    key = "ranged/object.bin"
    sample.client().put_object(Bucket=sample.bucket, Key=key, Body=data)
    fetcher = ObjectFetcher(s3_settings(PipelineOptions(sample.flags())), connections=2,
                            part_threads=4)
    try:
        _ranged_read_cases(fetcher, f"s3://{sample.bucket}/{key}", data)
    finally:
        fetcher.close()
