"""``--provider openclip``: tiny random models in the user's formats, loaded by the real loading
code (``openclip_loading``), give exactly the model's own vectors.

The reference vectors are computed here with open_clip directly (its own factory, transform and
tokenizer), not through dicomvec: a provider that mixed up images inside a batch, skipped the
model's mean/std, or embedded a neighbour's text fails. Also: one bad image fails alone, the
handler runs under Beam's own ``RunInference``, and the thumbnail path never imports torch.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicomvec.imaging import fit_and_encode
from dicomvec.io.providers import EncodedImage, ProviderConfig, create_provider
from tests.openclip_models import (EMBED_DIM, IMAGE_SIZE, image_vector, open_clip_folder,
                                   reference, text_vector, tiny_models)  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
#: the slower formats (a HF text tower, a second folder) run with the slow suite
FORMATS = ("folder", "openai", pytest.param("safetensors", marks=pytest.mark.slow),
           pytest.param("biomedclip", marks=pytest.mark.slow))


@pytest.fixture
def models(tiny_models):
    return tiny_models


def provider_for(path: Path, **settings):
    return create_provider(ProviderConfig("openclip", {"model": str(path), "device": "cpu",
                                                       **settings}))


def grays(count: int, seed: int = 0):
    """Distinct gray images of mixed sizes, fitted to the model's input as the pipeline does."""
    rng = np.random.default_rng(seed)
    shapes = [(80, 64), (64, 100), (130, 130), (50, 70)]
    return [fit_and_encode(rng.integers(0, 256, shapes[i % len(shapes)], dtype=np.uint8),
                           IMAGE_SIZE, "raw-gray") for i in range(count)]


@pytest.mark.parametrize("kind", FORMATS)
def test_the_model_says_its_dimension_and_input_size(models, kind):
    provider = provider_for(models[kind])
    assert provider.dimension == EMBED_DIM and provider.input_size == IMAGE_SIZE
    assert provider.semantic and provider.input_format == "raw-gray"
    assert provider.store_key == f"openclip:{provider.model}" and len(provider.store_key) <= 100
    assert provider.model.startswith(models[kind].stem if kind == "openai" else models[kind].name)
    assert provider.destination == "nowhere: local model"


def test_two_models_in_folders_of_the_same_name_never_share_a_store_key(tmp_path):
    """The store key names the folder and a digest of its weights: a second model kept in a
    folder of the same name gets its own key (its rows never mix with the first's); the same
    weights copied elsewhere keep theirs (a re-run from the copy resumes)."""
    first = open_clip_folder(tmp_path / "one" / "model", seed=0)
    second = open_clip_folder(tmp_path / "two" / "model", seed=5)
    copy = tmp_path / "copy" / "model"
    shutil.copytree(first, copy)
    keys = [provider_for(folder).store_key for folder in (first, second, copy)]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert all(key.startswith("openclip:model@") for key in keys)


@pytest.mark.parametrize("kind", FORMATS)
def test_each_vector_is_the_models_own_and_a_bad_image_fails_alone(models, kind):
    provider = provider_for(models[kind])
    provider.setup()
    encoded = grays(6)
    batch = [EncodedImage(e.data, e.mime) for e in encoded]
    batch.insert(2, EncodedImage(b"not an image", "image/png"))
    batch.insert(5, EncodedImage(b"\x00" * 10, "image/x-dicomvec-gray8;w=64;h=64"))
    png = fit_and_encode(encoded[0].pixels, IMAGE_SIZE, "png")  # PNG input works too
    batch.append(EncodedImage(png.data, png.mime))
    results = provider.embed_images(batch)
    assert len(results) == len(batch)
    assert [r.ok for r in results] == [True, True, False, True, True, False, True, True, True]
    assert results[2].error_type == "ValueError" and results[5].error_type == "ValueError"
    ref = reference(kind, models[kind])
    good = [r for r in results if r.ok]
    for result, enc in zip(good, encoded + [encoded[0]]):
        assert result.vector.dtype == np.float32 and result.vector.shape == (EMBED_DIM,)
        assert np.allclose(result.vector, image_vector(ref, enc.pixels), atol=1e-5)
    assert provider.stats()["images_embedded"] == 7 and provider.stats()["failures"] == 2


@pytest.mark.parametrize("kind", FORMATS)
def test_a_text_vector_is_the_text_towers_output(models, kind):
    provider = provider_for(models[kind])
    texts = ["pleural effusion", "no acute cardiopulmonary process", ""]
    results = provider.embed_texts(texts)
    ref = reference(kind, models[kind])
    for result, text in zip(results[:2], texts):
        assert np.allclose(result.vector, text_vector(ref, text), atol=1e-5)
    assert not results[2].ok and results[2].error_type == "EmptyText"
    assert not np.allclose(results[0].vector, results[1].vector)


def test_batches_larger_than_the_device_batch_run_in_device_sized_passes(models):
    provider = provider_for(models["folder"])  # CPU: 16 images per forward pass
    results = provider.embed_images([EncodedImage(e.data, e.mime) for e in grays(20, seed=4)])
    assert all(r.ok for r in results)
    assert provider.stats()["inference_batches"] == 2
    assert provider.handler.batch_elements_kwargs() == {"min_batch_size": 1,
                                                        "max_batch_size": 16}


def test_one_model_per_process_shared_by_provider_instances(models):
    first, second = provider_for(models["folder"]), provider_for(models["folder"])
    first.setup()
    second.setup()
    assert first.loaded is second.loaded


@pytest.mark.slow  # a Beam pipeline: ~5 s
def test_the_handler_runs_under_beams_own_run_inference(models):
    """``OpenClipModelHandler`` is a real ModelHandler: Beam's RunInference on the local runner
    gives each preprocessed image the model's own vector."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.util import assert_that

    from dicomvec.io.providers.openclip import OpenClipModelHandler, preprocess
    from dicomvec.io.providers.openclip_loading import load

    path = models["folder"]
    loaded = load(str(path), "cpu")
    encoded = grays(5, seed=9)
    inputs = [(i, preprocess(EncodedImage(e.data, e.mime), loaded)) for i, e in
              enumerate(encoded)]
    ref = reference("folder", path)
    want = {i: image_vector(ref, e.pixels) for i, e in enumerate(encoded)}

    def check(outputs):
        got = dict(outputs)
        assert sorted(got) == sorted(want)
        for key, vector in got.items():
            assert np.allclose(vector, want[key], atol=1e-5), key

    handler = beam.ml.inference.base.KeyedModelHandler(OpenClipModelHandler(str(path), "cpu"))
    with beam.Pipeline() as pipeline:
        out = (pipeline | beam.Create(inputs) | RunInference(handler)
               | beam.MapTuple(lambda key, prediction: (key, prediction.inference)))
        assert_that(out, check)


def test_the_thumbnail_path_never_imports_torch():
    """Without the openclip extra nothing changes: the registry, the provider list and a
    thumbnail embedding import neither torch nor open_clip."""
    code = ("import sys, numpy as np\n"
            "from dicomvec.io.providers import registry, create_provider, ProviderConfig\n"
            "from dicomvec.io.providers.base import EncodedImage\n"
            "from dicomvec.imaging import fit_and_encode\n"
            "import dicomvec.cli, dicomvec.pipeline.graph, dicomvec.search.engine\n"
            "assert 'openclip' in registry.available_providers()\n"
            "p = create_provider(ProviderConfig('thumbnail'))\n"
            "e = fit_and_encode(np.arange(4096, dtype=np.uint8).reshape(64, 64) % 251, 64)\n"
            "assert p.embed_images([EncodedImage(e.data, e.mime)])[0].ok\n"
            "bad = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_preflight_loads_the_model_and_lets_it_go(models, monkeypatch):
    """The launching process checks the model by loading it, and keeps no copy: the model it
    loaded is freed once preflight returns (a Flink driver never runs it)."""
    import weakref

    from dicomvec.io.providers import openclip
    provider = provider_for(models["folder"])
    loaded_refs = []
    real_load = openclip.OpenClipModelHandler.load_model

    def load_and_watch(handler):
        loaded = real_load(handler)
        loaded_refs.append(weakref.ref(loaded.model))
        return loaded

    monkeypatch.setattr(openclip.OpenClipModelHandler, "load_model", load_and_watch)
    provider.preflight()
    assert len(loaded_refs) == 1
    assert loaded_refs[0]() is None, "preflight kept the model alive"
