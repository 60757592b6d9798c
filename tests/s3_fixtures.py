"""S3 fixtures (pytest plugin): a real S3-compatible server (moto, ``tests.s3_server``) on
127.0.0.1 with a MIMIC-layout sample in a bucket, and the flags/environment to point a run at it.

``s3_sample`` (session) yields an ``S3Sample``: the server, the bucket, IAM credentials the
server enforces (signed requests only), the synthetic archive made by ``dicomvec.synthetic``
(``local_root`` holds the same files, for comparisons) uploaded under ``files/``, and the real
files from ``../shared/testdata/cxr`` under ``real/`` when present. ``s3_env`` (function) puts
the credentials in the environment (as a user on AWS would) and hides ``~/.aws`` and the
instance metadata service, so a missing credential is missing. A Flink variant can reuse both:
``sample.flags()`` for the job, ``sample.env()`` for the worker pool's environment.

Without moto (``pip install -e '.[test]'``) the fixtures skip locally and fail in CI.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import REAL_CXR
from tests.s3_server import S3Server

BUCKET = "mimic-cxr"
#: the synthetic sample: small images (fast), three transfer syntaxes, two broken files
SYNTH_COUNT, SYNTH_BROKEN, SYNTH_SIZE = 6, 2, (512, 424)
#: what an unset credential looks like to boto3 (no files, no instance role lookups)
NO_AWS_CONFIG = {"AWS_CONFIG_FILE": "/nonexistent/aws-config",
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
                 "AWS_EC2_METADATA_DISABLED": "true"}
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION")


@dataclasses.dataclass
class S3Sample:
    server: S3Server
    bucket: str
    access_key: str
    secret_key: str
    local_root: Path                  # the synthetic archive on disk (same bytes as the bucket)
    synthetic: List                   # dicomvec.synthetic.SyntheticFile per file
    real_files: List[str]             # s3:// paths of the real CXR files ([] when absent)

    @property
    def synthetic_pattern(self) -> str:
        return f"s3://{self.bucket}/files/**/*.dcm"

    def s3_path(self, local_path: str) -> str:
        relative = Path(local_path).relative_to(self.local_root).as_posix()
        return f"s3://{self.bucket}/{relative}"

    def flags(self) -> List[str]:
        return self.server.flags()

    def env(self) -> Dict[str, str]:
        return {**self.server.env(self.access_key, self.secret_key), **NO_AWS_CONFIG}

    def client(self):
        return self.server.admin_client(aws_access_key_id=self.access_key,
                                        aws_secret_access_key=self.secret_key)


@pytest.fixture(scope="session")
def s3_server():
    try:
        import moto  # noqa: F401
        import boto3  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"S3 tests need moto[server] and apache-beam[aws] "
                    f"(pip install -e '.[test]'): {exc}")
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_sample(s3_server, tmp_path_factory) -> S3Sample:
    from dicomvec import synthetic
    root = tmp_path_factory.mktemp("s3-archive")
    files = synthetic.generate(root, SYNTH_COUNT, SYNTH_SIZE, ("native", "j2k", "rle"),
                               SYNTH_BROKEN, seed=7)
    key, secret = s3_server.create_credentials()
    admin = s3_server.admin_client()
    admin.create_bucket(Bucket=BUCKET)
    s3_server.upload_tree(admin, root, BUCKET, "")
    real = []
    if REAL_CXR.is_dir():
        real = s3_server.upload_tree(admin, REAL_CXR, BUCKET, "real", pattern="*.dcm")
    s3_server.enforce_auth()
    return S3Sample(s3_server, BUCKET, key, secret, root, files, real)


@pytest.fixture
def s3_env(s3_sample, monkeypatch) -> S3Sample:
    """The sample's credentials in this process's environment (driver and in-process workers)."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_sample.env().items():
        monkeypatch.setenv(name, value)
    return s3_sample
