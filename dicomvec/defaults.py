"""Every default a user can see, defined once: flags, settings and the classes that read them
take their defaults from here. Imports nothing, so ``--help`` can show them without Beam or
numpy."""

# -- the sink ----------------------------------------------------------------------------------
SINK_URL = "sqlite:///out/dicomvec.db"
SCHEMA = "VectorSearch"
IMAGES_TABLE = "MIMICCXRImages"
REPORTS_TABLE = "MIMICCXRReports"
#: the vector length when neither --dimension nor --provider says (NV-CLIP ViT-H)
DIMENSION = 1024
#: the Provider column's width: a provider's ``store_key`` (e.g. ``openclip:<model>``) fits it
PROVIDER_KEY_LENGTH = 50


def images_table(dimension: int) -> str:
    """The images table of ``dimension``-long vectors when ``--sink-table`` / ``--table`` is not
    given: ``MIMICCXRImages`` for 1024-d (NV-CLIP, thumbnail), ``MIMICCXRImages<d>`` otherwise,
    so vectors of every length get a table of their own without DDL written by the user."""
    return IMAGES_TABLE if int(dimension) == DIMENSION else f"{IMAGES_TABLE}{int(dimension)}"


def reports_table(dimension: int) -> str:
    """The reports table of ``dimension``-long vectors when ``--reports-table`` is not given
    (the same rule as ``images_table``)."""
    return REPORTS_TABLE if int(dimension) == DIMENSION else f"{REPORTS_TABLE}{int(dimension)}"

# -- the job -----------------------------------------------------------------------------------
DEAD_LETTER = "out/dead_letter"
PROVIDER = "thumbnail"
IMAGE_SIZE, IMAGE_FORMAT, NORMALIZATION = 224, "png", "standard"
BATCH_SIZE = 64
PROGRESS_EVERY = 500
WATCH_INTERVAL_S = 30.0
DEAD_LETTER_FREQUENCY_S = 60.0
#: pipeline stages, in order; dead letters name one of them
STAGES = ("read", "decode", "normalize", "resize", "embed", "write")
#: what ``dicomvec search --target`` searches
SEARCH_TARGETS = ("images", "reports")
SEARCH_K, CONTACT_SHEET_COLUMNS = 10, 5

# -- NV-CLIP -----------------------------------------------------------------------------------
NVCLIP_URL = "https://integrate.api.nvidia.com/v1"
NVCLIP_MODEL = "nvidia/nvclip"
#: requests in flight per embedding worker (and batches pending in the embed stage)
NVCLIP_CONCURRENCY = 4
NVCLIP_TIMEOUT_S = 60.0
#: ``dicomvec check-nvclip`` answers quickly or not at all
CHECK_NVCLIP_TIMEOUT_S = 30.0
NVCLIP_MAX_ATTEMPTS = 5
#: CLIP's text context, in tokens, including its start and end markers
CLIP_CONTEXT_TOKENS = 77
#: NV-CLIP hosted API: an inline data URL's base64 payload must be shorter than this
MAX_BASE64_CHARS = 180_000

# -- a local open_clip model (--provider openclip) ---------------------------------------------
#: --device: auto = CUDA when torch sees a GPU, else the CPU
OPENCLIP_DEVICE = "auto"
#: images per forward pass on a CPU and on a CUDA device
OPENCLIP_CPU_BATCH, OPENCLIP_CUDA_BATCH = 16, 64

# -- OpenAI-compatible text embeddings (search --via-reports) -----------------------------------
TEXT_URL = "https://api.openai.com/v1"
TEXT_MODEL = "text-embedding-3-large"
TEXT_TIMEOUT_S = 60.0
TEXT_MAX_ATTEMPTS = 5
