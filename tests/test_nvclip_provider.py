"""NVClipProvider against the local contract server: batching, bisection, retries, validation,
fatal errors, key hygiene. Every test checks that good inputs got *their own* vector (the
server's deterministic function of the input), bad ones a failure with a reason, no zero
vectors, and that the API key is absent from logs and messages."""
from __future__ import annotations

import io
import logging
import pickle
import time
from typing import Dict, List, Sequence

import numpy as np
import pytest
from PIL import Image

from dicomvec.io.providers.base import EmbeddingResult, EncodedImage, FatalProviderError, \
    ProviderConfig
from dicomvec.io.providers.nvclip import (NVClipProvider, NVClipSettings, approx_clip_tokens,
                                          cost_line, truncate_for_clip)
from dicomvec.io.providers.registry import create_provider
from tests.nvclip_server import Fault, NVClipContractServer, expected_vector, image_input_string



# -- helpers ----------------------------------------------------------------------------------
def png(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="JPEG")
    return buf.getvalue()


def images(n: int, start: int = 0) -> List[EncodedImage]:
    return [EncodedImage(png(start + i), "image/png") if i % 3 else
            EncodedImage(jpeg(start + i), "image/jpeg") for i in range(n)]


def expected_for(image: EncodedImage) -> np.ndarray:
    mime = "image/png" if image.data.startswith(b"\x89PNG") else "image/jpeg"
    return expected_vector(image_input_string(image.data, mime))


CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00garbage-not-an-image" * 4


@pytest.fixture(autouse=True)
def key_never_logged(caplog, nvclip_api_key):
    caplog.set_level(logging.DEBUG)  # includes urllib3's connection/request lines
    yield
    assert nvclip_api_key not in caplog.text


@pytest.fixture
def provider(nvclip_settings):
    made = create_provider(ProviderConfig("nvclip", nvclip_settings))
    made.setup()
    yield made
    made.teardown()


def make(settings: Dict, **overrides) -> NVClipProvider:
    made = NVClipProvider(ProviderConfig("nvclip", {**settings, **overrides}))
    made.setup()
    return made


def check(results: Sequence[EmbeddingResult], inputs: Sequence[EncodedImage], key: str,
          bad: Sequence[int] = (), expected=expected_for) -> None:
    """Good positions carry their own unit vector; bad ones a failure with a reason."""
    assert len(results) == len(inputs)
    for position, (result, item) in enumerate(zip(results, inputs)):
        assert key not in result.error_message
        if position in bad:
            assert not result.ok and result.vector is None, position
            assert result.error_type and result.error_message, position
        else:
            assert result.ok, (position, result.error_type, result.error_message)
            assert result.vector.dtype == np.float32 and result.vector.shape == (1024,)
            assert abs(float(np.linalg.norm(result.vector)) - 1.0) < 1e-5
            np.testing.assert_allclose(result.vector, expected(item), atol=1e-6)


# -- the happy path and request shaping -------------------------------------------------------
def test_each_image_gets_its_own_vector_in_one_request(provider, nvclip_server, nvclip_api_key):
    batch = images(10)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key)
    assert nvclip_server.batch_sizes() == [10]
    assert provider.stats()["images_embedded"] == 10 and provider.stats()["failures"] == 0


def test_large_batches_split_into_even_requests_of_at_most_64(provider, nvclip_server,
                                                              nvclip_api_key):
    batch = images(150)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key)
    assert sorted(nvclip_server.batch_sizes()) == [50, 50, 50]


def test_requests_overlap_up_to_concurrency(nvclip_settings, nvclip_server, nvclip_api_key):
    nvclip_server.latency_s = 1.0  # wide windows: overlap is certain even on a loaded machine
    provider = make(nvclip_settings, concurrency=4, request_size=16)
    try:
        batch = images(128)
        check(provider.embed_images(batch), batch, nvclip_api_key)
    finally:
        provider.teardown()
    assert len(nvclip_server.batch_sizes()) == 8
    assert 3 <= nvclip_server.max_in_flight <= 4


def test_connections_are_pooled(provider, nvclip_server, nvclip_api_key):
    for i in range(12):
        batch = images(1, start=i)
        check(provider.embed_images(batch), batch, nvclip_api_key)
    assert nvclip_server.request_count == 12
    assert len(nvclip_server.connections) <= 4  # reused, not one per request


def test_submit_images_keeps_several_batches_pending(provider, nvclip_server, nvclip_api_key):
    nvclip_server.latency_s = 1.0
    batches = [images(8, start=100 * b) for b in range(4)]
    futures = [provider.submit_images(batch) for batch in batches]
    for future, batch in zip(futures, batches):
        check(future.result(timeout=10), batch, nvclip_api_key)
    assert nvclip_server.max_in_flight >= 2


def test_png_bytes_labelled_jpeg_are_sent_as_png(provider, nvclip_server, nvclip_api_key):
    batch = [EncodedImage(png(1), "image/jpeg"), EncodedImage(jpeg(2), "image/png")]
    check(provider.embed_images(batch), batch, nvclip_api_key)


def test_empty_batch_sends_nothing(provider, nvclip_server):
    assert provider.embed_images([]) == []
    assert nvclip_server.request_count == 0


# -- bad inputs ---------------------------------------------------------------------------------
def test_oversize_and_non_image_inputs_fail_before_sending(provider, nvclip_server,
                                                           nvclip_api_key):
    big = np.random.default_rng(7).integers(0, 256, (400, 400), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big, "L").save(buf, format="PNG")
    batch = images(3) + [EncodedImage(buf.getvalue(), "image/png"),
                         EncodedImage(b"GIF89a....", "image/gif"), EncodedImage(b"", "image/png")]
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key, bad=(3, 4, 5))
    assert [r.error_type for r in results[3:]] == ["ImageTooLarge", "UnsupportedImageType",
                                                   "EmptyImage"]
    assert "180,000" in results[3].error_message
    assert not any(r.retryable for r in results[3:])
    assert nvclip_server.batch_sizes() == [3]


def test_undecodable_image_is_isolated_by_bisection(provider, nvclip_server, nvclip_api_key):
    batch = images(16)
    batch[11] = EncodedImage(CORRUPT_PNG, "image/png")
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key, bad=(11,))
    bad = results[11]
    assert bad.error_type == "NVClipRejected" and not bad.retryable
    assert "422" in bad.error_message and "could not be decoded" in bad.error_message
    # 16 → 8 → 4 → 2 → 1: one rejected request per level plus the good halves
    assert nvclip_server.request_count == 1 + 2 * 4
    assert provider.stats()["bisections"] == 4


def test_two_rejected_images_in_a_batch_of_64(provider, nvclip_server, nvclip_api_key):
    batch = images(64)
    nvclip_server.reject_image(batch[0].data)
    nvclip_server.reject_image(batch[37].data)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key, bad=(0, 37))
    assert all(results[i].error_type == "NVClipRejected" for i in (0, 37))
    assert "could not be processed" in results[37].error_message
    assert max(nvclip_server.batch_sizes()) == 64
    assert provider.stats()["images_embedded"] == 62 and provider.stats()["failures"] == 2


def test_every_request_refused_stops_the_job(nvclip_settings, nvclip_server, nvclip_api_key):
    provider = make(nvclip_settings, model="nvidia/not-a-model")
    try:
        with pytest.raises(FatalProviderError, match="unknown model") as info:
            for b in range(5):
                provider.embed_images(images(4, start=10 * b))
        assert nvclip_api_key not in str(info.value)
        assert nvclip_server.request_count == 3 * 7  # three batches of 4, bisected fully
    finally:
        provider.teardown()


# -- transient faults and retries -----------------------------------------------------------
@pytest.mark.parametrize("fault", [
    Fault.http(429), Fault.http(500), Fault.http(503), Fault.http(502), Fault.slow(5.0),
    Fault.drop(), Fault.wrong_count(), Fault.bad_index(), Fault.not_json()],
    ids=lambda f: f"{f.kind}{f.status or ''}")
def test_transient_fault_is_retried_and_every_image_still_gets_its_vector(
        provider, nvclip_server, nvclip_api_key, fault):
    nvclip_server.inject(fault)
    batch = images(6)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key)
    assert nvclip_server.request_count == 2
    assert all(r.attempts == 2 for r in results)
    assert provider.stats()["retries"] == 1 and provider.stats()["requests"] == 2


def test_retry_after_is_honoured_and_holds_other_requests(provider, nvclip_server,
                                                          nvclip_api_key):
    nvclip_server.inject(Fault.http(429, retry_after="1"))
    batch = images(4)
    started = time.monotonic()
    check(provider.embed_images(batch), batch, nvclip_api_key)
    assert time.monotonic() - started >= 0.95  # backoff alone would be ~0.02 s
    assert provider.stats()["rate_limited"] == 1


def test_exhausted_retries_give_retryable_failures(provider, nvclip_server, nvclip_api_key):
    nvclip_server.inject(Fault.http(503), Fault.http(503), Fault.http(503))
    batch = images(5)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key, bad=range(5))
    for result in results:
        assert result.retryable and result.attempts == 3
        assert result.error_type == "ServerError" and "503" in result.error_message
    assert provider.stats()["failures"] == 5


def test_persistent_timeouts_give_retryable_failures(nvclip_settings, nvclip_server,
                                                     nvclip_api_key):
    provider = make(nvclip_settings, max_attempts=2, timeout_s=0.3)
    nvclip_server.inject(Fault.slow(0.8), Fault.slow(0.8))
    try:
        batch = images(3)
        results = provider.embed_images(batch)
    finally:
        provider.teardown()
    check(results, batch, nvclip_api_key, bad=range(3))
    assert all(r.error_type == "Timeout" and r.retryable and r.attempts == 2 for r in results)


# -- response validation ------------------------------------------------------------------------
def test_wrong_dimension_is_never_stored(provider, nvclip_server, nvclip_api_key):
    nvclip_server.inject(Fault.wrong_dimension())
    batch = images(4)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key, bad=range(4))
    assert all(r.error_type == "InvalidEmbedding" and "1032 dimensions" in r.error_message
               for r in results)


def test_non_finite_vector_fails_only_its_image(provider, nvclip_server, nvclip_api_key):
    nvclip_server.inject(Fault.non_finite())
    batch = images(5)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key, bad=(0,))
    assert "non-finite" in results[0].error_message


# -- fatal answers and the key --------------------------------------------------------------
def test_401_stops_with_a_plain_message(nvclip_server, nvclip_settings, monkeypatch):
    monkeypatch.setenv("NVIDIA_API_KEY", "testkey_nvapi_wrong-key-123456")
    provider = make(nvclip_settings)
    try:
        with pytest.raises(FatalProviderError, match=r"rejected the API key \(401\)") as info:
            provider.embed_images(images(3))
    finally:
        provider.teardown()
    assert "testkey_nvapi_wrong-key-123456" not in str(info.value)
    assert nvclip_server.request_count == 1  # no retry, no bisection


def test_402_stops_with_a_plain_message(provider, nvclip_server):
    nvclip_server.credits_exhausted = True
    with pytest.raises(FatalProviderError, match=r"no credits left \(402\)"):
        provider.embed_texts(["chest x-ray"])


def test_hosted_url_requires_the_key(monkeypatch):
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    provider = NVClipProvider(ProviderConfig("nvclip", {}))
    with pytest.raises(FatalProviderError, match="NVIDIA_API_KEY is not set"):
        provider.setup()


def test_self_hosted_works_without_a_key(monkeypatch, nvclip_settings):
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    with NVClipContractServer(api_key=None) as server:
        provider = make({**nvclip_settings, "url": server.url})
        try:
            batch = images(3)
            check(provider.embed_images(batch), batch, "no-key")
        finally:
            provider.teardown()


def test_key_echoed_by_the_server_is_redacted(provider, nvclip_server, nvclip_api_key):
    nvclip_server.inject(Fault.echo_auth())
    batch = images(1)
    results = provider.embed_images(batch)
    check(results, batch, nvclip_api_key, bad=(0,))
    assert "Bearer [REDACTED]" in results[0].error_message


def test_pickled_provider_carries_no_key_and_works_after_setup(provider, nvclip_server,
                                                               nvclip_api_key):
    provider.embed_images(images(2))
    blob = pickle.dumps(provider)
    assert nvclip_api_key.encode() not in blob
    clone = pickle.loads(blob)
    clone.setup()
    try:
        batch = images(2, start=50)
        check(clone.embed_images(batch), batch, nvclip_api_key)
    finally:
        clone.teardown()
    assert nvclip_api_key not in repr(provider.stats()) + repr(provider)


# -- texts ----------------------------------------------------------------------------------
def test_texts_get_their_own_vectors_and_long_ones_are_truncated(provider, nvclip_server,
                                                                 nvclip_api_key, caplog):
    long_text = " ".join(["bilateral pleural effusion with cardiomegaly"] * 20)
    texts = ["left lower lobe pneumonia", long_text, "   "]
    results = provider.embed_texts(texts)
    assert results[0].ok and results[1].ok and not results[2].ok
    np.testing.assert_allclose(results[0].vector, expected_vector(texts[0]), atol=1e-6)
    cut, truncated = truncate_for_clip(long_text, 77)
    assert truncated and long_text.startswith(cut) and len(cut) < len(long_text)
    np.testing.assert_allclose(results[1].vector, expected_vector(cut), atol=1e-6)
    assert results[2].error_type == "EmptyText"
    assert "truncated" in caplog.text
    stats = provider.stats()
    assert stats["texts_embedded"] == 2 and stats["texts_truncated"] == 1


def test_token_estimate_fits_clip_context():
    text = "cardiomegaly " * 40
    cut, truncated = truncate_for_clip(text, 77)
    assert truncated and approx_clip_tokens(cut)[-1][1] <= 75
    assert truncate_for_clip("no acute cardiopulmonary process.", 77) == (
        "no acute cardiopulmonary process.", False)


# -- settings, stats, cost ------------------------------------------------------------------
def test_settings_defaults_and_errors():
    hosted = NVClipSettings.from_mapping({"concurrency": None})
    assert hosted.url == "https://integrate.api.nvidia.com/v1" and hosted.model == "nvidia/nvclip"
    assert hosted.hosted and hosted.requests_per_minute == 40
    local = NVClipSettings.from_mapping({"url": "http://gpu1:8000/v1", "concurrency": "8",
                                         "max_requests_per_minute": 0})
    assert not local.hosted and local.concurrency == 8 and local.requests_per_minute == 0
    with pytest.raises(ValueError, match="unknown nvclip setting"):
        NVClipSettings.from_mapping({"concurency": 4})
    with pytest.raises(ValueError, match="request_size"):
        NVClipSettings.from_mapping({"request_size": 65})


def test_rate_limit_spaces_requests(nvclip_settings, nvclip_server, nvclip_api_key):
    provider = make(nvclip_settings, max_requests_per_minute=600, request_size=2)  # 0.1 s apart
    try:
        started = time.monotonic()
        batch = images(8)
        check(provider.embed_images(batch), batch, nvclip_api_key)
        assert time.monotonic() - started >= 0.3  # four requests: three gaps
    finally:
        provider.teardown()


def test_stats_and_cost_line(nvclip_settings, nvclip_server, nvclip_api_key):
    provider = make(nvclip_settings, cost_per_1k_images=2.5)
    try:
        provider.embed_images(images(4) + [EncodedImage(b"nope", "image/png")])
        stats = provider.stats()
    finally:
        provider.teardown()
    assert stats["requests"] == 1 and stats["images_embedded"] == 4 and stats["failures"] == 1
    assert "4 images" in provider.cost_line() and "est. cost $0.01 at $2.5" in provider.cost_line()
    summed = {"images_embedded": 12_000, "requests": 200}  # e.g. summed over workers
    assert "est. cost $30.00" in cost_line(summed, 2.5)
    assert "cost unknown" in cost_line(summed)
