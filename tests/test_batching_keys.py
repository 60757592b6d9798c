"""Flink-related pure functions. Batching keys: ``crc32(ImageID) % shards``, shards from the runner's parallelism, so that
GroupIntoBatches (keyed state) and the embed / write stages fused after it run on every worker."""
from __future__ import annotations

import collections

from apache_beam.options.pipeline_options import PipelineOptions

from dicomvec.record import ImageRecord
from dicomvec.transforms.embed import batching_key, batching_shards


def test_shards_follow_the_runner_parallelism():
    assert batching_shards(PipelineOptions(["--runner", "FlinkRunner", "--parallelism", "4"])) == 4
    assert batching_shards(PipelineOptions(["--runner", "PortableRunner"])) == 2
    assert batching_shards(PipelineOptions([])) == 1                      # local engine, 1 worker
    assert batching_shards(PipelineOptions(["--direct_num_workers", "3"])) == 3


def test_keys_are_stable_and_spread():
    records = [ImageRecord(path=f"/x/{i}.dcm", image_id=f"{i:08x}-img") for i in range(400)]
    keys = [batching_key(r, 2) for r in records]
    assert keys == [batching_key(r, 2) for r in records]                  # same in every process
    counts = collections.Counter(keys)
    assert set(counts) == {0, 1} and min(counts.values()) > 150           # both halves used
    assert {batching_key(r, 1) for r in records} == {0}


def test_final_counters_from_flink_accumulators():
    """The shape Beam's Flink runner reports in ``/jobs/<jid>/accumulators`` (seen on 1.19.3)."""
    import base64
    import json

    from dicomvec.pipeline.job_monitor import accumulated_counters

    def info(name, value, namespace="dicomvec", urn="beam:metric:user:sum_int64:v1"):
        varint = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            varint.append(byte | (0x80 if value else 0))
            if not value:
                break
        return {"urn": urn, "type": "beam:metrics:sum_int64:v1",
                "payload": base64.b64encode(bytes(varint)).decode(),
                "labels": {"PTRANSFORM": "t", "NAMESPACE": namespace, "NAME": name}}
    value = {"metrics": {"attempted": [info("write_ok", 40), info("write_ok", 300),
                                       info("decode_failed", 2), info("other", 7, "lineage")]}}
    answer = {"job-accumulators": [], "user-task-accumulators": [
        {"name": "__metricscontainers", "type": "MetricsAccumulator", "value": json.dumps(value)}]}
    assert accumulated_counters(answer) == {"write_ok": 340, "decode_failed": 2}
