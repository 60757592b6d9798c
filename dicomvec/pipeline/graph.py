"""Assemble the ingestion graph.

files (fileio.MatchFiles, or listed paths; Reshuffle; ReadMatches) → IdentifyDicom → OnePerImageID → SkipStored
(unless --force) → DecodePixels →
NormalizePixels → ResizeAndEncode → BatchForEmbedding (GroupIntoBatches, keys spread over the
runner's parallelism) →
EmbedBatch → WriteToStore; every stage's ``failed`` output → Flatten → WriteDeadLetters.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from dicomvec.io.dead_letter import WriteDeadLetters
from dicomvec.io.providers import create_provider
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.transforms.dedupe import OnePerImageID
from dicomvec.transforms.resume import SkipStored
from dicomvec.transforms.embed import BatchForEmbedding, EmbedBatch, batching_shards
from dicomvec.transforms.identify import IdentifyDicom, MatchPath
from dicomvec.transforms.preprocess import DecodePixels, NormalizePixels, ResizeAndEncode
from dicomvec.transforms.stage import FAILED
from dicomvec.transforms.watch import WatchForCompleteFiles
from dicomvec.transforms.write import WriteToStore


def _stage(pcoll, label, dofn, failures):
    outputs = pcoll | label >> beam.ParDo(dofn).with_outputs(FAILED, main="ok")
    failures.append(outputs[FAILED])
    return outputs.ok


def match_input(pipeline: beam.Pipeline, options: DicomvecOptions, paths, failures,
                streaming: bool):
    """PCollection of FileMetadata: the ``--input`` pattern (watched continuously when
    streaming), or exactly ``paths`` (reprocess); a listed path that no longer exists becomes a
    ``read`` dead letter."""
    if paths is None and streaming:
        interval = options.watch_interval
        return pipeline | "WatchInput" >> WatchForCompleteFiles(
            options.input, interval, options.settle_seconds or interval / 2)
    if paths is None:
        matched = pipeline | "MatchFiles" >> fileio.MatchFiles(
            options.input, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
    else:
        listed = pipeline | "ListedPaths" >> beam.Create(sorted(paths))
        matched = _stage(listed, "MatchPaths", MatchPath(), failures)
    # one pattern is matched by one worker: spread the file list (metadata only) so that reading
    # the headers (Identify) runs on every worker of a cluster, not only the matching one
    return matched | "SpreadFiles" >> beam.Reshuffle()


def build_ingest(pipeline: beam.Pipeline, options: DicomvecOptions, run_id: str, paths=None,
                 streaming: bool = False):
    """Add the ingestion transforms to ``pipeline`` (reading ``options.input``, or the given
    ``paths``); returns the PCollection of stored counts."""
    failures = []
    files = (match_input(pipeline, options, paths, failures, streaming)
             | "ReadMatches" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED))
    records = _stage(files, "Identify", IdentifyDicom(), failures)
    unique = records | "OnePerImageID" >> OnePerImageID(streaming)
    if not options.force:
        unique = unique | "SkipStored" >> SkipStored(
            options.sink, options.sink_schema, options.sink_table, options.provider,
            options.preprocess_version())
    decoded = _stage(unique, "Decode", DecodePixels(options.image_size), failures)
    normalized = _stage(decoded, "Normalize", NormalizePixels(options.normalization), failures)
    encoded = _stage(normalized, "Resize",
                     ResizeAndEncode(options.image_size, options.image_format), failures)
    batch_wait = (options.batch_wait or options.watch_interval / 2) if streaming else None
    batches = encoded | "Batch" >> BatchForEmbedding(options.batch_size, batch_wait,
                                                     batching_shards(pipeline.options))
    embedded = _stage(batches, "Embed", EmbedBatch(options.provider_config()), failures)
    dimension = create_provider(options.provider_config()).dimension
    stored = _stage(embedded, "Write",
                    WriteToStore(options.sink, options.sink_schema, options.sink_table,
                                 options.preprocess_version(), dimension,
                                 options.progress_every), failures)
    (failures
     | "AllFailures" >> beam.Flatten()
     | "DeadLetters" >> WriteDeadLetters(
         options.dead_letter, run_id,
         triggering_frequency=options.dead_letter_frequency if streaming else None))
    return stored
