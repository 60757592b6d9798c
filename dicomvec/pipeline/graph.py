"""Assemble the ingestion graph.

files (fileio.MatchFiles, or listed paths; Reshuffle; ReadMatches) → IdentifyDicom → OnePerImageID (batch:
copies of an image travel together) → SkipStored (unless --force) → DecodePixels (first copy
that decodes) → NormalizePixels → ResizeAndEncode → [streaming: KeepFirstWorkingCopy] →
BatchForEmbedding (GroupIntoBatches, keys spread over the runner's parallelism) → EmbedBatch → WriteToStore; matched paths
the listing could not list → ReportUnreadable; every stage's ``failed`` output → Flatten →
WriteDeadLetters.
"""
from __future__ import annotations

from functools import partial

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from dicomvec.io.dead_letter import WriteDeadLetters
from dicomvec.io.object_storage import UseStorageSettings, storage_settings
from dicomvec.io.providers import create_provider
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.transforms.dedupe import KeepFirstWorkingCopy, OnePerImageID
from dicomvec.transforms.resume import SkipStored
from dicomvec.transforms.embed import BatchForEmbedding, EmbedBatch, batching_shards
from dicomvec.transforms.identify import IdentifyDicom, MatchPath, ReportUnreadable
from dicomvec.transforms.preprocess import DecodePixels, NormalizePixels, ResizeAndEncode
from dicomvec.transforms.stage import FAILED
from dicomvec.transforms.watch import WatchForCompleteFiles
from dicomvec.transforms.write import WriteToStore, to_row


def stage(pcoll, label, dofn, failures):
    """``pcoll | label >> ParDo(dofn)``: the main output; its ``failed`` output is added to
    ``failures`` (they all become dead letters)."""
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
        # fileio.MatchFiles (Create + MatchAll), with the storage settings Beam's filesystems
        # read from the environment applied first in the worker that lists (gs:// emulator)
        matched = (pipeline
                   | "MatchFiles" >> beam.Create([options.input])
                   | "StorageSettings" >> beam.ParDo(UseStorageSettings(storage_settings(options)))
                   # the driver has already refused an input that matches nothing
                   | "MatchAll" >> fileio.MatchAll(
                       empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW))
    else:
        listed = pipeline | "ListedPaths" >> beam.Create(sorted(paths))
        matched = stage(listed, "MatchPaths", MatchPath(), failures)
    # one pattern is matched by one worker: spread the file list (metadata only) so that reading
    # the headers (Identify) runs on every worker of a cluster, not only the matching one
    return matched | "SpreadFiles" >> beam.Reshuffle()


def build_ingest(pipeline: beam.Pipeline, options: DicomvecOptions, run_id: str, paths=None,
                 streaming: bool = False, unreadable=(), ignore_non_dicom: bool = False):
    """Add the ingestion transforms to ``pipeline`` (reading ``options.input``, or the given
    ``paths``); ``unreadable``: matched paths the listing left out (each becomes a ``read``
    dead letter); ``ignore_non_dicom`` (a folder input): files plainly not DICOM are counted,
    not dead-lettered. Returns the PCollection of stored counts."""
    failures = []
    if unreadable:
        stage(pipeline | "UnreadablePaths" >> beam.Create(sorted(unreadable)),
               "ReportUnreadable", ReportUnreadable(), failures)
    files = (match_input(pipeline, options, paths, failures, streaming)
             | "ReadMatches" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED))
    records = stage(files, "Identify", IdentifyDicom(storage_settings(options),
                                                   options.read_ahead(), ignore_non_dicom),
                    failures)
    unique = records if streaming else records | "OnePerImageID" >> OnePerImageID()
    provider = create_provider(options.provider_config())
    dimension = provider.dimension
    image_size, image_format = options.model_input(provider)
    preprocess_version = options.preprocess_version(provider)
    sink = options.sink_config(dimension)
    if not options.force:
        unique = unique | "SkipStored" >> SkipStored(
            sink, provider.store_key, preprocess_version,
            valid_dimension=dimension if options.replace_invalid else None)
    decoded = stage(unique, "Decode",
                    DecodePixels(image_size, storage_settings(options),
                                 options.read_ahead()),
                     failures)
    normalized = stage(decoded, "Normalize", NormalizePixels(options.normalization), failures)
    encoded = stage(normalized, "Resize",
                     ResizeAndEncode(image_size, image_format), failures)
    if streaming:  # copies arrive at any time: the first one that got this far is kept
        encoded = encoded | "OnePerImageID" >> KeepFirstWorkingCopy()
    batch_wait = (options.batch_wait or options.watch_interval / 2) if streaming else None
    batches = encoded | "Batch" >> BatchForEmbedding(options.batch_size, batch_wait,
                                                     batching_shards(pipeline.options))
    embedded = stage(batches, "Embed", EmbedBatch(options.provider_config()), failures)
    write = WriteToStore(sink, partial(to_row, preprocess_version=preprocess_version),
                         dimension=dimension, progress_every=options.progress_every)
    stored = stage(embedded, "Write", write, failures)
    (failures
     | "AllFailures" >> beam.Flatten()
     | "DeadLetters" >> WriteDeadLetters(
         options.dead_letter, run_id,
         triggering_frequency=options.dead_letter_frequency if streaming else None))
    return stored
