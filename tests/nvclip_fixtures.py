"""pytest fixtures for the NV-CLIP contract server, a plugin module: test modules that use them
say ``pytest_plugins = ["tests.nvclip_fixtures"]`` (or tests/conftest.py lists it once).

* ``nvclip_api_key`` — a fresh secret, exported as ``NVIDIA_API_KEY`` for the test.
* ``nvclip_server`` — a started ``NVClipContractServer`` that requires that key.
* ``nvclip_settings`` — provider settings for it with test-sized timeouts and backoffs.
"""
from __future__ import annotations

import secrets
from typing import Any, Dict, Iterator

import pytest

from tests.nvclip_server import NVClipContractServer


@pytest.fixture
def nvclip_api_key(monkeypatch) -> str:
    key = "testkey_nvapi_TESTSECRET-" + secrets.token_hex(16)
    monkeypatch.setenv("NVIDIA_API_KEY", key)
    return key


@pytest.fixture
def nvclip_server(nvclip_api_key) -> Iterator[NVClipContractServer]:
    with NVClipContractServer(api_key=nvclip_api_key) as server:
        yield server


@pytest.fixture
def nvclip_settings(nvclip_server) -> Dict[str, Any]:
    # 2 s: a normal request on a loaded 2-core machine never takes that long, so only the
    # injected slow faults (5 s and more) time out and request counts stay exact
    return {"url": nvclip_server.url, "concurrency": 4, "timeout_s": 2.0,
            "connect_timeout_s": 2.0, "max_attempts": 3, "backoff_base_s": 0.01,
            "backoff_max_s": 0.05}
