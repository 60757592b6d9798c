"""``DicomvecOptions``: the job's flags as a Beam ``PipelineOptions`` subclass, so the same
command line works on the DirectRunner, the FlinkRunner and any other runner (Beam's own flags
such as ``--runner`` or ``--direct_num_workers`` pass through untouched).

The flags are declared on ``DicomvecFlags``, which imports nothing heavy, so ``--help`` can list
them without importing Beam; ``DicomvecOptions`` (= ``DicomvecFlags`` + Beam's
``PipelineOptions``) is built on first use of the name. Commands that run no pipeline take the
same flags as plain values (``FlagValues``). Options are grouped in ``--help`` by
``dicomvec.commands.pipeline_flags.group_of`` (from the name and help text: no list to update).
"""
from __future__ import annotations

from dicomvec import PREPROCESS_VERSION
from dicomvec import defaults as D
from dicomvec.io.prefetch import DEFAULT_PREFETCH_MB, DEFAULT_PREFETCH_OBJECTS


class DicomvecFlags:
    """dicomvec's own pipeline flags (and helpers over their values); Beam-free."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", required=False, default=None,
                            help="DICOM file pattern on any Beam filesystem, e.g. "
                                 "'/data/mimic-cxr/files/**/*.dcm'")
        parser.add_argument("--sink", default=D.SINK_URL,
                            help="Vector store URL: sqlite:///path, postgresql://..., "
                                 "iris://USER@HOST:1972/NAMESPACE")
        parser.add_argument("--sink_schema", "--sink-schema", default=D.SCHEMA,
                            help="Schema of the images table (ignored by SQLite)")
        parser.add_argument("--sink_table", "--sink-table", default=None,
                            help=f"Images table name (default: from the provider's vector "
                                 f"length: {D.IMAGES_TABLE} for 1024-d, {D.IMAGES_TABLE}<d> "
                                 f"for any other length d; created when missing)")
        parser.add_argument("--dead_letter", "--dead-letter", default=D.DEAD_LETTER,
                            help="Directory for Parquet dead letters (one sub-folder per run)")
        parser.add_argument("--provider", default=D.PROVIDER,
                            help="Embedding provider, and where image pixels go: thumbnail "
                                 "(NON-semantic; nowhere: computed here), openclip (a local "
                                 "model; nowhere), nvclip (NV-CLIP: a self-hosted NIM at "
                                 "--nvclip-url, or NVIDIA's hosted API, a third party: see "
                                 "docs/privacy.md)")
        parser.add_argument("--image_size", "--image-size", type=int, default=None,
                            help="Model input size S: images fit inside S×S and are padded "
                                 f"(default: {D.IMAGE_SIZE}) — with --provider openclip the "
                                 "default is the model's own input size")
        parser.add_argument("--image_format", "--image-format", default=D.IMAGE_FORMAT,
                            choices=["png", "jpeg"], help="Encoding of the model input")
        parser.add_argument("--normalization", default=D.NORMALIZATION,
                            choices=["standard", "mimic-jpg"],
                            help="standard = modality LUT → VOI → MONOCHROME1 inversion → "
                                 "robust fallback; mimic-jpg = the MIMIC-CXR-JPG recipe")
        parser.add_argument("--batch_size", "--batch-size", type=int, default=D.BATCH_SIZE,
                            help="Images per embedding request (NV-CLIP takes at most 64)")
        parser.add_argument("--run_id", "--run-id", default=None,
                            help="Run identifier (default: UTC timestamp); names the "
                                 "dead-letter generation folder")
        parser.add_argument("--progress_every", "--progress-every", type=int,
                            default=D.PROGRESS_EVERY,
                            help="Log progress every N images per worker")
        parser.add_argument("--force", action="store_true", default=False,
                            help="Re-embed images already stored for this provider and "
                                 "preprocessing version (default: skip them, pay nothing twice)")
        parser.add_argument("--replace_invalid", "--replace-invalid", action="store_true",
                            default=False,
                            help="Re-embed images whose stored row has a zero or wrong-length "
                                 "vector (rows written by other tools; `dicomvec check-db` "
                                 "lists them)")
        parser.add_argument("--reports_table", "--reports-table", default=None,
                            help=f"Reports table name (in --sink-schema): `dicomvec reports` "
                                 f"writes it, `search` reads it (default: from the provider's "
                                 f"vector length: {D.REPORTS_TABLE} for 1024-d, "
                                 f"{D.REPORTS_TABLE}<d> for any other length d)")
        # object storage (s3://, gs://): read-ahead per worker
        parser.add_argument("--prefetch_objects", "--prefetch-objects", type=int, default=DEFAULT_PREFETCH_OBJECTS,
                            help="object storage input: objects fetched ahead of the one being "
                                 "read, per worker and reading stage (header reads and whole "
                                 "reads overlap the CPU work); 1 = one at a time")
        parser.add_argument("--prefetch_mb", "--prefetch-mb", type=float, default=float(DEFAULT_PREFETCH_MB),
                            help="object storage input: at most this many MB of whole objects "
                                 "fetched ahead per worker (default: 2 MIMIC-CXR objects of "
                                 "~15 MB, sized for <= 300 MB RSS per worker; a worker's memory "
                                 "grows by about this much)")
        parser.add_argument("--gcs_emulator_host", "--gcs-emulator-host", default=None,
                            help="gs:// through a GCS JSON-API server at this URL (e.g. "
                                 "fake-gcs-server), for the driver AND every worker: the "
                                 "job's options carry it, each process sets "
                                 "STORAGE_EMULATOR_HOST from it (where unset) before it builds "
                                 "a GCS client (default: the driver's STORAGE_EMULATOR_HOST)")
        # streaming (with Beam's --streaming)
        parser.add_argument("--watch_interval", "--watch-interval", type=float,
                            default=D.WATCH_INTERVAL_S,
                            help="streaming: seconds between polls of --input")
        parser.add_argument("--settle_seconds", "--settle-seconds", type=float, default=None,
                            help="streaming: a file is read once its size and mtime have not "
                                 "changed for this long; make it longer than the pauses of the "
                                 "slowest writer (default: half the watch interval)")
        parser.add_argument("--batch_wait", "--batch-wait", type=float, default=None,
                            help="streaming: flush a partial batch after this many seconds "
                                 "(default: half the watch interval)")
        parser.add_argument("--dead_letter_frequency", "--dead-letter-frequency", type=float,
                            default=D.DEAD_LETTER_FREQUENCY_S,
                            help="streaming: seconds between dead-letter file writes")
        parser.add_argument("--stop_after_idle", "--stop-after-idle", type=float, default=0.0,
                            help="streaming: stop once nothing is in flight and nothing new "
                                 "arrived for this many seconds (0 = run until a signal)")
        # NV-CLIP provider settings (key comes from NVIDIA_API_KEY, never a flag)
        parser.add_argument("--nvclip_url", "--nvclip-url",
                            default=D.NVCLIP_URL,
                            help="NV-CLIP base URL ending in /v1 (hosted API or a NIM)")
        parser.add_argument("--nvclip_model", "--nvclip-model", default=D.NVCLIP_MODEL,
                            help="model name (self-hosted NIM: nvidia/nvclip-vit-h-14)")
        parser.add_argument("--nvclip_concurrency", "--nvclip-concurrency", type=int,
                            default=D.NVCLIP_CONCURRENCY,
                            help="NV-CLIP requests in flight per embedding worker")
        parser.add_argument("--nvclip_max_requests_per_minute",
                            "--nvclip-max-requests-per-minute", type=float, default=None,
                            help="Client-side limit PER WORKER process (default: 40 for the "
                                 "hosted API, unlimited self-hosted; 0 = unlimited). A cluster "
                                 "sends up to this × the number of worker processes")
        parser.add_argument("--nvclip_cost_per_1k_images", "--nvclip-cost-per-1k-images",
                            type=float, default=0.0,
                            help="Price per 1,000 images, for the summary's cost estimate")
        parser.add_argument("--nvclip_timeout", "--nvclip-timeout", type=float,
                            default=D.NVCLIP_TIMEOUT_S,
                            help="seconds to wait for an NV-CLIP answer before retrying")
        parser.add_argument("--nvclip_max_attempts", "--nvclip-max-attempts", type=int,
                            default=D.NVCLIP_MAX_ATTEMPTS,
                            help="attempts per NV-CLIP request (1 = never retry)")

        # a local open_clip model (torch in the worker; pixels never leave the machine)
        parser.add_argument("--openclip_model", "--openclip-model", default=None,
                            help="openclip: a model folder as published on the hub "
                                 "(open_clip_config.json + open_clip_pytorch_model.bin or "
                                 ".safetensors), an OpenAI-CLIP checkpoint file (.pt), or "
                                 "hf-hub:NAME from the HuggingFace cache (offline: "
                                 "HF_HUB_OFFLINE=1)")
        parser.add_argument("--device", default=D.OPENCLIP_DEVICE,
                            choices=["auto", "cpu", "cuda"],
                            help="openclip: where the model runs (auto: cuda if available); "
                                 f"images per forward pass: {D.OPENCLIP_CPU_BATCH} on a CPU, "
                                 f"{D.OPENCLIP_CUDA_BATCH} on CUDA")

    def model_input(self, provider) -> tuple:
        """(size, format) of the model input for ``provider``: ``--image-size``, else the
        model's own input size, else 224; the provider's own input format (``raw-gray``) when it
        asks for one, else ``--image-format``."""
        size = self.image_size or getattr(provider, "input_size", None) or D.IMAGE_SIZE
        return int(size), getattr(provider, "input_format", None) or self.image_format

    def preprocess_version(self, provider=None) -> str:
        """What made the model input, stored per row (≤ 20 chars): code version, normalization,
        size and format (``model_input(provider)``). A resumed run skips only rows made the
        same way."""
        method = {"standard": "std", "mimic-jpg": "mjpg"}.get(self.normalization,
                                                              self.normalization)
        size, image_format = self.model_input(provider)
        image_format = {"raw-gray": "raw"}.get(image_format, image_format)
        return f"{PREPROCESS_VERSION}-{method}-{size}-{image_format}"[:20]

    def read_ahead(self):
        """(objects, bytes) of the object-storage read-ahead window."""
        return max(1, int(self.prefetch_objects)), max(1, int(self.prefetch_mb * 1024 * 1024))

    def sink_config(self, dimension=None):
        """Where vectors go (``SinkConfig``), for the driver and the workers: the tables named
        by ``--sink-table`` / ``--reports-table``, or else the tables of the provider's vector
        length (``dimension``, when the caller has the provider at hand)."""
        from dicomvec.io.stores.base import SinkConfig
        if dimension is None and not (self.sink_table and self.reports_table):
            dimension = provider_dimension(self.provider_config())
        return SinkConfig.for_dimension(dimension or D.DIMENSION, self.sink, self.sink_schema,
                                        self.sink_table, self.reports_table)

    def provider_config(self):
        """The provider's name and settings (no secrets) for workers to build it from: for
        openclip its --openclip-* flags and --device, for the others the --nvclip-* flags."""
        from dicomvec.io.providers.base import ProviderConfig
        from dicomvec.io.providers.registry import provider_target
        target = provider_target(self.provider)  # workers build what the driver registered
        if self.provider == "openclip":
            return ProviderConfig(name=self.provider, target=target, settings={
                "model": self.openclip_model, "device": self.device})
        return ProviderConfig(name=self.provider, target=target, settings={
            "url": self.nvclip_url,
            "model": self.nvclip_model,
            "concurrency": self.nvclip_concurrency,
            "max_requests_per_minute": self.nvclip_max_requests_per_minute,
            "timeout_s": self.nvclip_timeout,
            "max_attempts": self.nvclip_max_attempts,
            "cost_per_1k_images": self.nvclip_cost_per_1k_images,
        })


class FlagValues(DicomvecFlags):
    """dicomvec's flags as plain values (an argparse ``Namespace``'s), for commands that run no
    pipeline (``search``, ``serve``): the attributes and helpers of ``DicomvecOptions``
    (``sink_config()``, ``provider_config()``, ...) without importing Beam."""

    def __init__(self, **values):
        self.__dict__.update(values)


_DIMENSIONS: dict = {}


def provider_dimension(config) -> int:
    """The vector length of the provider ``config`` builds (asked once per process and
    configuration: the search page asks for every request)."""
    key = (config.name, config.target, repr(sorted(config.settings.items())))
    if key not in _DIMENSIONS:
        from dicomvec.io.providers import create_provider
        _DIMENSIONS[key] = int(create_provider(config).dimension)
    return _DIMENSIONS[key]


def __getattr__(name: str):
    """``DicomvecOptions``, built (importing Beam) the first time it is asked for."""
    if name != "DicomvecOptions":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from apache_beam.options.pipeline_options import PipelineOptions

    class DicomvecOptions(DicomvecFlags, PipelineOptions):
        """dicomvec's flags as Beam pipeline options (see ``DicomvecFlags``)."""

    DicomvecOptions.__module__ = __name__
    DicomvecOptions.__qualname__ = "DicomvecOptions"
    globals()["DicomvecOptions"] = DicomvecOptions
    return DicomvecOptions
