"""dicomvec: a Beam pipeline that turns chest X-ray DICOM archives into vectors for search."""

__version__ = "0.1.0"

# Bumped whenever decode/normalize/resize changes the pixels sent to a model; stored with every
# row so a resumed run can tell whether an existing vector was made the same way.
PREPROCESS_VERSION = "pp1"
