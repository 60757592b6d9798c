"""The OpenAI embeddings client (query texts for ``search --via-reports``) against the local
contract server: request/response shape (float and base64), ``dimensions``, retries on 429 /
5xx, one clear error for a bad key, a missing key, a wrong vector length; the server itself
refuses malformed requests the way OpenAI does."""
from __future__ import annotations

import logging
import secrets

import numpy as np
import pytest
import requests

from dicomvec.errors import UserError
from dicomvec.io.providers.openai_client import API_KEY_ENV, OpenAISettings, OpenAITextEmbedder
from tests.openai_server import Fault, OpenAIContractServer


@pytest.fixture
def openai_key(monkeypatch) -> str:
    key = "testkey-openai-TESTSECRET-" + secrets.token_hex(16)
    monkeypatch.setenv(API_KEY_ENV, key)
    return key


@pytest.fixture
def server(openai_key):
    with OpenAIContractServer(api_key=openai_key) as srv:
        yield srv


def _settings(server, **kwargs) -> OpenAISettings:
    values = dict(url=server.url, timeout_s=5.0, connect_timeout_s=2.0, max_attempts=3,
                  backoff_base_s=0.01, backoff_max_s=0.05)
    values.update(kwargs)
    return OpenAISettings(**values)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_vectors_are_the_servers_in_input_order(server, encoding):
    texts = ["right lower lobe consolidation", "no acute cardiopulmonary process"]
    with OpenAITextEmbedder(_settings(server, encoding_format=encoding), 3072) as embedder:
        vectors = embedder.embed(texts)
    for text, vec in zip(texts, vectors):
        assert vec.shape == (3072,) and vec.dtype == np.float32
        np.testing.assert_allclose(vec, server.vector(text), atol=1e-6)
    assert server.bodies[-1] == {"input": texts, "model": "text-embedding-3-large",
                                 "encoding_format": encoding}


def test_dimensions_is_sent_and_honoured(server):
    with OpenAITextEmbedder(_settings(server, dimensions=256), 256) as embedder:
        (vec,) = embedder.embed(["pleural effusion"])
    assert server.bodies[-1]["dimensions"] == 256
    np.testing.assert_allclose(vec, server.vector("pleural effusion", 256), atol=1e-6)
    # and it differs from the full vector's head: the server renormalised, so does the client
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-6)


def test_429_with_retry_after_and_5xx_are_retried(server):
    server.inject(Fault.http(429, retry_after="0"), Fault.http(500), Fault.http(503))
    with OpenAITextEmbedder(_settings(server, max_attempts=4), 3072) as embedder:
        (vec,) = embedder.embed(["cardiomegaly"])
        retries = embedder.stats().get("retries")
    np.testing.assert_allclose(vec, server.vector("cardiomegaly"), atol=1e-6)
    assert server.statuses() == [429, 500, 503, 200]
    assert retries == 3


def test_persistent_server_errors_end_in_one_clear_error(server):
    server.inject(*[Fault.http(500)] * 3)
    with OpenAITextEmbedder(_settings(server), 3072) as embedder:
        with pytest.raises(UserError, match=r"server error \(500.*gave up after 3 attempts"):
            embedder.embed(["edema"])
    assert server.statuses() == [500, 500, 500]


def test_bad_key_is_one_clear_error_without_the_key(server, monkeypatch, caplog):
    wrong = "testkey-openai-WRONGSECRET-" + secrets.token_hex(8)
    monkeypatch.setenv(API_KEY_ENV, wrong)
    caplog.set_level(logging.DEBUG)
    with OpenAITextEmbedder(_settings(server), 3072) as embedder:
        with pytest.raises(UserError, match=f"rejected the API key \\(401\\): check "
                                            f"{API_KEY_ENV}") as info:
            embedder.embed(["edema"])
    assert wrong not in str(info.value) and wrong not in caplog.text
    assert server.statuses() == [401]  # not retried


def test_missing_key_fails_before_any_request(server, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(UserError, match=f"{API_KEY_ENV} is not set"):
        with OpenAITextEmbedder(_settings(server), 3072):
            pass
    assert server.log == []


def test_wrong_vector_length_names_both_lengths(server):
    server.inject(Fault.wrong_dimension(), Fault.wrong_dimension(), Fault.wrong_dimension())
    with OpenAITextEmbedder(_settings(server), 3072) as embedder:
        with pytest.raises(UserError, match=r"1536 dimensions, expected 3072.*3072-d"):
            embedder.embed(["atelectasis"])


def test_unknown_model_is_fatal_not_retried(server):
    with OpenAITextEmbedder(_settings(server, model="text-embedding-4-huge"), 3072) as embedder:
        with pytest.raises(UserError, match=r"not found \(404\).*--text-model"):
            embedder.embed(["atelectasis"])
    assert server.statuses() == [404]


def test_retries_are_logged_without_the_key(server, openai_key, caplog):
    caplog.set_level(logging.DEBUG)
    server.inject(Fault.http(429, retry_after="0"))
    with OpenAITextEmbedder(_settings(server), 3072) as embedder:
        embedder.embed(["pneumothorax"])
    assert "OpenAI embeddings request failed" in caplog.text
    assert openai_key not in caplog.text


# -- the contract server enforces OpenAI's shape ---------------------------------------------
@pytest.mark.parametrize("body, status, param", [
    ({"model": "text-embedding-3-large"}, 400, "input"),
    ({"model": "text-embedding-3-large", "input": ""}, 400, "input"),
    ({"model": "text-embedding-3-large", "input": []}, 400, "input"),
    ({"model": "text-embedding-3-large", "input": ["ok", 3]}, 400, "input"),
    ({"model": "text-embedding-3-large", "input": "x", "encoding_format": "int8"}, 400,
     "encoding_format"),
    ({"model": "text-embedding-3-large", "input": "x", "dimensions": 0}, 400, "dimensions"),
    ({"model": "text-embedding-3-large", "input": "x", "dimensions": 4000}, 400, "dimensions"),
    ({"model": "text-embedding-ada-002", "input": "x", "dimensions": 256}, 400, "dimensions"),
    ({"model": "text-embedding-3-large", "input": "x", "top_k": 3}, 400, "top_k"),
    ({"input": "x"}, 400, "model"),
    ({"model": "no-such-model", "input": "x"}, 404, "model"),
])
def test_server_refuses_bad_shapes(server, openai_key, body, status, param):
    response = requests.post(server.url + "/embeddings", json=body, timeout=5,
                             headers={"Authorization": f"Bearer {openai_key}"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_server_needs_the_bearer_key_and_answers_the_documented_shape(server, openai_key):
    body = {"model": "text-embedding-3-small", "input": "x"}
    assert requests.post(server.url + "/embeddings", json=body, timeout=5).status_code == 401
    response = requests.post(server.url + "/embeddings", json=body, timeout=5,
                             headers={"Authorization": f"Bearer {openai_key}"})
    payload = response.json()
    assert response.status_code == 200
    assert payload["object"] == "list" and payload["model"] == "text-embedding-3-small"
    assert set(payload["usage"]) == {"prompt_tokens", "total_tokens"}
    (item,) = payload["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == 1536
