"""``dicomvec check-nvclip`` against the contract server: OK, not ready, bad key, unreachable."""
from __future__ import annotations

import argparse
import io
import socket

from dicomvec.commands import check_nvclip



def run_check(*argv: str):
    """Exit code and the text printed; an error is one line on stderr, nothing on stdout."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    check_nvclip.register(sub)
    args = parser.parse_args(["check-nvclip", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out=out, err=err)
    if code != 0:
        assert err.getvalue().startswith("dicomvec: error: ") and err.getvalue().count("\n") == 1
        assert "error" not in out.getvalue()
    else:
        assert err.getvalue() == ""
    return code, out.getvalue() + err.getvalue()


def test_ok_prints_dimension_and_latency(nvclip_server, nvclip_api_key):
    code, text = run_check("--nvclip-url", nvclip_server.url)
    assert code == 0, text
    assert "OK: nvidia/nvclip" in text and "1024-d vector in" in text and " ms" in text
    assert nvclip_server.batch_sizes() == [1]
    assert nvclip_api_key not in text


def test_not_ready_is_an_error(nvclip_server):
    nvclip_server.ready = False
    code, text = run_check("--nvclip-url", nvclip_server.url)
    assert code == 2 and "not ready yet (503)" in text
    assert nvclip_server.request_count == 0


def test_missing_health_route_is_tolerated(nvclip_server, nvclip_api_key):
    nvclip_server.health_route = False  # like the hosted API
    code, text = run_check("--nvclip-url", nvclip_server.url)
    assert code == 0, text
    assert "no /health/ready" in text and "OK: nvidia/nvclip" in text


def test_refused_embedding_is_a_plain_error(nvclip_server):
    code, text = run_check("--nvclip-url", nvclip_server.url, "--nvclip-model", "nvidia/x")
    assert code == 2 and "test embedding failed" in text and "unknown model" in text


def test_wrong_key_is_a_plain_error(nvclip_server, monkeypatch):
    monkeypatch.setenv("NVIDIA_API_KEY", "testkey_nvapi_not-the-right-one")
    code, text = run_check("--nvclip-url", nvclip_server.url)
    assert code == 2 and "rejected the API key (401)" in text
    assert "testkey_nvapi_not-the-right-one" not in text


def test_hosted_without_key_is_a_plain_error(monkeypatch):
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    code, text = run_check()
    assert code == 2 and "NVIDIA_API_KEY is not set" in text


def test_unreachable_url_is_a_plain_error(monkeypatch):
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, text = run_check("--nvclip-url", f"http://127.0.0.1:{port}/v1", "--nvclip-timeout", "2")
    assert code == 2 and "cannot reach" in text
