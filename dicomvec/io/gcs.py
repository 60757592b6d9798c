"""``gs://`` checks before a job starts: one plain line instead of Beam's retries or silence.

Beam's GCS filesystem reports a missing bucket as a nested ``BeamIOError`` and, when the
Application Default Credentials cannot be loaded (a broken ``GOOGLE_APPLICATION_CREDENTIALS``
file, say), logs a warning and goes on anonymously, so a private bucket then answers 401/403.
``describe_gcs_problem`` makes one object listing (``max_results=1``) of the pattern's bucket
and prefix with Beam's own client (``gcsio.create_storage_client``) and turns what goes wrong
into one line: credentials that cannot be loaded, refused (401), access denied (403), missing
bucket (404), an endpoint that does not answer.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from dicomvec.io.remote import _gcs_client, split_object_path


def _static_prefix(name_pattern: str) -> str:
    cut = min((i for i in (name_pattern.find(c) for c in "*?[") if i >= 0),
              default=len(name_pattern))
    return name_pattern[:cut]


def _credentials_problem() -> Optional[str]:
    """A one-line reason when GOOGLE_APPLICATION_CREDENTIALS is set but unusable (Beam would
    silently fall back to anonymous access)."""
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return None
    try:
        import google.auth
        from google.auth import exceptions
        google.auth.default()
    except ImportError:
        return None
    except exceptions.GoogleAuthError as exc:
        reason = str(exc).splitlines()[0][:200]
        return (f"cannot use the Google credentials in GOOGLE_APPLICATION_CREDENTIALS "
                f"({path}): {type(exc).__name__}: {reason}")
    return None


def describe_gcs_problem(path: str, settings: Dict[str, object]) -> Optional[str]:
    """One listing of ``path``'s bucket and static prefix: a one-line reason why the bucket
    cannot be read, or None when it can."""
    bucket, name = split_object_path(path)
    where = f"gs://{bucket}"
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "Google Cloud Storage"
    problem = _credentials_problem()
    if problem:
        return problem
    try:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc
        import requests
    except ImportError:
        return ("gs:// paths need Beam's GCP extra: pip install 'dicomvec[gcp]' "
                "(apache-beam[gcp])")
    try:
        client = _gcs_client(settings, 1)
        blobs = client.list_blobs(bucket, prefix=_static_prefix(name), max_results=1)
        next(iter(blobs.pages), None)
    except gexc.NotFound:
        return f"GCS bucket {bucket!r} does not exist (at {endpoint})"
    except gexc.Unauthorized:
        return (f"{endpoint} refused the Google credentials for {where} (401): check "
                "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`")
    except gexc.Forbidden as exc:
        billing = "requester pays" in str(exc).lower() or "user project" in str(exc).lower()
        if billing:
            return (f"{where} is a requester-pays bucket: Beam's GCS filesystem cannot send "
                    "a billing project; copy the objects to a bucket of your own first")
        return (f"access denied to {where} (403): the credentials need "
                "storage.objects.list and storage.objects.get on it")
    except aexc.GoogleAuthError as exc:
        return (f"cannot get a Google access token for {where}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}")
    except (requests.ConnectionError, requests.Timeout):
        return f"cannot reach the GCS endpoint {endpoint}"
    except gexc.GoogleAPICallError as exc:
        return f"cannot list {where} at {endpoint}: HTTP {getattr(exc, 'code', '')}"
    return None
