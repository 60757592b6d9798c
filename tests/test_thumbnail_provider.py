import io

import numpy as np
import pytest
from PIL import Image

from dicomvec.io.providers import (EncodedImage, ProviderConfig, TextNotSupportedError,
                                   create_provider)


def _png(array: np.ndarray) -> EncodedImage:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue(), "image/png")


@pytest.fixture
def provider():
    return create_provider(ProviderConfig("thumbnail"))


def test_vectors_are_deterministic_unit_length_and_image_specific(provider):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (224, 224))
    b = np.flipud(a)
    ra, ra2, rb = provider.embed_images([_png(a), _png(a), _png(b)])
    assert ra.ok and rb.ok
    assert ra.vector.shape == (1024,) and ra.vector.dtype == np.float32
    assert abs(float(np.linalg.norm(ra.vector)) - 1.0) < 1e-5
    np.testing.assert_array_equal(ra.vector, ra2.vector)
    assert float(ra.vector @ rb.vector) < 0.9


def test_near_duplicate_is_closer_than_another_image(provider):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 200, (224, 224)).astype(float)
    noisy = np.clip(base + rng.normal(0, 5, base.shape), 0, 255)
    other = rng.integers(0, 200, (224, 224))
    v_base, v_noisy, v_other = (r.vector for r in provider.embed_images(
        [_png(base), _png(noisy), _png(other)]))
    assert v_base @ v_noisy > v_base @ v_other


def test_bad_images_fail_alone_and_never_give_zero_vectors(provider):
    good = _png(np.arange(224 * 224).reshape(224, 224) % 251)
    constant = _png(np.full((224, 224), 7))
    garbage = EncodedImage(b"not an image", "image/png")
    results = provider.embed_images([good, constant, garbage, good])
    assert [r.ok for r in results] == [True, False, False, True]
    assert "constant" in results[1].error_message
    assert results[2].error_type
    assert all(r.vector is None for r in results[1:3])


def test_refuses_text_and_says_it_is_not_semantic(provider):
    assert provider.semantic is False
    assert "nonsemantic" in provider.model
    with pytest.raises(TextNotSupportedError):
        provider.embed_texts(["pneumothorax"])
