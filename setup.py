"""dicomvec packaging. Beam ships this package to workers with ``--setup_file ./setup.py``."""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"',
                    Path(__file__).with_name("dicomvec").joinpath("__init__.py").read_text()
                    ).group(1)

OPENCLIP = ["open_clip_torch>=3.0", "torch>=2.2", "transformers>=4.40", "safetensors>=0.4"]

setup(
    name="dicomvec",
    version=VERSION,
    description="Apache Beam pipeline: chest X-ray DICOM archive -> vectors for cross-modal search",
    packages=find_packages(include=["dicomvec", "dicomvec.*"]),
    package_data={"dicomvec.reports.samples": ["*.txt"],
                  "dicomvec.serve": ["templates/*.html", "static/*.css"]},
    python_requires=">=3.10",
    install_requires=[
        "apache-beam==2.77.0",
        "pydicom==3.0.2",
        # MIT/BSD decoders only (pylibjpeg-libjpeg is GPLv3 and is not used)
        "pylibjpeg>=2.0",
        "pylibjpeg-openjpeg>=2.4",
        "pylibjpeg-rle>=2.0",
        "python-gdcm>=3.0.24",
        "numpy>=1.26",
        "pillow>=10.3",
        "pyarrow>=14",
        "requests>=2.31",
        "tenacity>=8.2",
        # one BLAS thread for a search's small matrix products (sqlite_index)
        "threadpoolctl>=3.1",
        # `dicomvec serve` (imported only by that command)
        "flask>=3.0",
    ],
    extras_require={
        "iris": ["intersystems-irispython>=5.2"],
        # s3:// inputs and dead letters through Beam's own S3 filesystem (boto3)
        "aws": ["apache-beam[aws]==2.77.0"],
        # gs:// inputs and dead letters through Beam's own GCS filesystem (google-cloud-storage)
        "gcp": ["apache-beam[gcp]==2.77.0"],
        "postgres": ["psycopg[binary]>=3.1", "pgvector>=0.5"],
        # `--provider openclip`: a local image-text model (open_clip / OpenAI-CLIP checkpoints,
        # BiomedCLIP's PubMedBERT text tower through transformers). PyTorch from PyPI is the
        # CUDA build (~5.5 GB with its nvidia-* wheels): kept out of the default install.
        "openclip": OPENCLIP,
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pgserver==0.1.4", "pgvector>=0.5",
                 "psycopg[binary]>=3.1", "intersystems-irispython>=5.2",
                 # S3 tests: Beam's S3 filesystem against moto's standalone S3 server
                 "apache-beam[aws]==2.77.0", "moto[server]>=5.1",
                 # GCS tests: Beam's GCS filesystem against fake-gcs-server (scripts/bucket)
                 "apache-beam[gcp]==2.77.0",
                 # `dicomvec serve` in a real browser: the system's chromium + chromedriver
                 # (scripts/chromium/install.sh), driven by Selenium
                 "selenium>=4.20",
                 # the local-model provider's tests build and save tiny models in its formats
                 *OPENCLIP,
                 # benchmarks/local_model.py's ONNX Runtime route (torch.onnx.export needs onnx)
                 "onnxruntime>=1.17", "onnx>=1.15"],
    },
    entry_points={"console_scripts": ["dicomvec=dicomvec.cli:main"]},
)
