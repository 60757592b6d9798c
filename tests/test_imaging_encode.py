"""fit_and_encode / data_url: fit, pad, RGB replication, one encode, the inline size limit."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from dicomvec.imaging import MAX_BASE64_CHARS, data_url, fit_and_encode


def smooth(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return (127 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)).astype(np.uint8)


def test_wide_image_is_fitted_and_padded_top_and_bottom():
    encoded = fit_and_encode(np.full((150, 300), 200, np.uint8), size=224)
    px = encoded.pixels
    assert px.shape == (224, 224) and px.dtype == np.uint8
    rows = np.flatnonzero(px.max(axis=1) > 0)
    assert len(rows) == 112 and rows[0] == 56  # aspect 2:1 kept, centred
    assert px[:56].max() == 0 and px[-56:].max() == 0
    assert np.all(px[56:168] == 200)


def test_small_image_is_scaled_up_to_fit():
    px = fit_and_encode(np.full((100, 50), 90, np.uint8), size=224).pixels
    cols = np.flatnonzero(px.max(axis=0) > 0)
    assert len(cols) == 112 and px.shape == (224, 224)


@pytest.mark.parametrize("rgb, mode", [(True, "RGB"), (False, "L")])
def test_png_round_trips_to_the_returned_pixels(rgb, mode):
    encoded = fit_and_encode(smooth(300, 260), size=224, rgb=rgb)
    assert encoded.mime == "image/png"
    with Image.open(io.BytesIO(encoded.data)) as im:
        assert im.format == "PNG" and im.mode == mode and im.size == (224, 224)
        decoded = np.asarray(im)
    channels = decoded if decoded.ndim == 3 else decoded[..., None]
    for c in range(channels.shape[-1]):
        np.testing.assert_array_equal(channels[..., c], encoded.pixels)


def test_jpeg_has_its_own_mime_type():
    encoded = fit_and_encode(smooth(300, 260), size=224, image_format="jpeg")
    assert encoded.mime == "image/jpeg" and encoded.data[:2] == b"\xff\xd8"


def test_unknown_format_raises():
    with pytest.raises(ValueError, match="format"):
        fit_and_encode(smooth(10, 10), image_format="gif")


def test_an_image_over_the_inline_limit_is_refused():
    noise = np.random.default_rng(0).integers(0, 256, (600, 600), dtype=np.uint8)
    with pytest.raises(ValueError, match="180000"):
        fit_and_encode(noise, size=518)


def test_typical_model_input_stays_under_the_limit():
    encoded = fit_and_encode(smooth(3056 // 7, 2544 // 7), size=224)
    assert len(base64.b64encode(encoded.data)) < MAX_BASE64_CHARS


def test_data_url_round_trips():
    encoded = fit_and_encode(smooth(50, 40), size=32)
    url = data_url(encoded.data, encoded.mime)
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix):]) == encoded.data


def test_busy_image_is_recompressed_harder_before_being_refused():
    # smooth gradients + mild noise: over the limit at the fast zlib level, under it at level 9
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:400, 0:400]
    busy = ((x * 0.6 + y * 0.3) % 256 + rng.integers(0, 8, (400, 400))).astype(np.uint8)
    from dicomvec.imaging.encoding import PNG_FAST_LEVEL, _encode, base64_length
    rgb = Image.fromarray(busy).convert("RGB")
    fast_len = base64_length(len(_encode(rgb, "PNG", PNG_FAST_LEVEL)))
    best_len = base64_length(len(_encode(rgb, "PNG", 9)))
    assert best_len < MAX_BASE64_CHARS <= fast_len  # precondition: the retry is what saves it
    encoded = fit_and_encode(busy, size=400)
    assert base64_length(len(encoded.data)) < MAX_BASE64_CHARS
