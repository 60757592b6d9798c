"""``dicomvec run --provider openclip`` end to end on a tiny random model saved as an open_clip
folder: every stored vector is the model's own output for THAT row's image (recomputed here per
ImageID from the DICOM file with open_clip itself), in batches that mix image sizes next to a
broken file (dead-lettered, its neighbours stored); ``search --text`` ranks by the text tower's
vector; image → image finds each image itself first; two local worker processes store the
same vectors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from dicomvec import cli, imaging
from dicomvec.defaults import images_table
from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.providers import ProviderConfig, create_provider
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import run_ingest
from dicomvec.synthetic import generate
from tests.openclip_models import (EMBED_DIM, IMAGE_SIZE, image_vector, reference, text_vector,
                                   tiny_models)  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # Beam jobs with a model in each worker
BATCH = 4


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(root, ImageID → file, broken files): two image sizes, two syntaxes, one truncated file."""
    root = tmp_path_factory.mktemp("openclip-archive")
    files = generate(root, 5, size=(160, 128), syntaxes=["native", "rle"], seed=41, broken=1)
    files += generate(root, 4, size=(96, 200), syntaxes=["native"], seed=42)
    good = {f.dicom_id: Path(f.path) for f in files if not f.broken}
    broken = [f for f in files if f.broken]
    return root, good, broken


def flags(root: Path, tmp: Path, model: Path, run_id: str, *extra: str):
    return ["--input", str(root / "files" / "**" / "*.dcm"), "--sink", f"sqlite:///{tmp}/db.sqlite",
            "--dead-letter", str(tmp / "dl"), "--provider", "openclip", "--openclip-model",
            str(model), "--device", "cpu", "--run-id", run_id, "--batch-size", str(BATCH),
            *extra]


def stored_vectors(tmp: Path, model: Path, ids) -> Dict[str, np.ndarray]:
    """The rows' vectors under the model's store key, in the table of its vector length."""
    provider = create_provider(ProviderConfig("openclip", {"model": str(model)}))
    assert provider.store_key == f"openclip:{provider.model}"
    assert provider.model.startswith(f"{model.name}@")  # the folder's name @ its weights' digest
    with VectorStore(f"sqlite:///{tmp}/db.sqlite",
                     table=images_table(provider.dimension)) as store:
        return store.vectors(list(ids), provider.store_key)


def model_pixels(path: Path) -> np.ndarray:
    """The pipeline's model input for a file, made outside the pipeline: read, decode,
    normalize, fit to the model's input size."""
    return imaging.preprocess(path.read_bytes(), size=IMAGE_SIZE, method="standard",
                              image_format="raw-gray").pixels


@pytest.fixture(scope="module")
def ingested(archive, tiny_models, tmp_path_factory):
    root, good, broken = archive
    tmp = tmp_path_factory.mktemp("openclip-run")
    model = tiny_models["folder"]
    summary = run_ingest(flags(root, tmp, model, "oc1"))
    return summary, tmp, model


def test_each_stored_vector_is_the_models_output_for_its_own_image(archive, ingested):
    root, good, broken = archive
    summary, tmp, model = ingested
    assert summary.stored == len(good) and summary.dead_lettered_total == len(broken)
    assert summary.provider == "openclip" and summary.accounting.holds
    dead = read_dead_letters(str(tmp / "dl"), "oc1")
    assert sorted(row["path"] for row in dead) == sorted(f.path for f in broken)
    vectors = stored_vectors(tmp, model, good)
    assert set(vectors) == set(good)
    ref = reference("folder", model)
    for image_id, path in good.items():
        want = image_vector(ref, model_pixels(path))
        assert np.allclose(vectors[image_id], want, atol=1e-5), \
            f"{image_id}: its stored vector is not the model's vector for its own image"


def test_the_rows_say_the_model_and_the_raw_gray_input(ingested):
    summary, tmp, model = ingested
    import sqlite3
    with sqlite3.connect(tmp / "db.sqlite") as conn:
        rows = set(conn.execute("SELECT EmbeddingModel, PreprocessVersion FROM "
                                 f"{images_table(EMBED_DIM)}"))
    [(stored_model, version)] = rows
    assert stored_model.startswith(f"{model.name}@") and version == f"pp1-std-{IMAGE_SIZE}-raw"


def test_a_rerun_skips_every_stored_image(archive, ingested):
    root, good, _ = archive
    summary, tmp, model = ingested
    again = run_ingest(flags(root, tmp, model, "oc1b"))
    assert again.skipped_existing == len(good) and again.stored == 0


def search(capsys, tmp: Path, model: Path, *query: str):
    rc = cli.main(["search", *query, "--json", "--k", "20", "--sink", f"sqlite:///{tmp}/db.sqlite",
                   "--provider", "openclip", "--openclip-model", str(model), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_text_search_ranks_by_the_text_towers_vector(archive, ingested, capsys):
    _, good, _ = archive
    _, tmp, model = ingested
    found = search(capsys, tmp, model, "--text", "pleural effusion")
    query = text_vector(reference("folder", model), "pleural effusion")
    vectors = stored_vectors(tmp, model, good)
    want = sorted(good, key=lambda i: -float(np.dot(vectors[i], query)))
    got = [hit["image_id"] if "image_id" in hit else hit["ImageID"] for hit in found["results"]]
    assert got == want


def test_image_to_image_finds_each_image_itself_first(archive, ingested, capsys):
    _, good, _ = archive
    _, tmp, model = ingested
    for image_id, path in good.items():
        hits = search(capsys, tmp, model, "--image", str(path))["results"]
        first = hits[0].get("image_id", hits[0].get("ImageID"))
        assert first == image_id


def test_two_worker_processes_store_the_same_vectors(archive, ingested, tmp_path):
    root, good, _ = archive
    _, tmp, model = ingested
    summary = run_ingest(flags(root, tmp_path, model, "oc2", "--direct_num_workers", "2",
                               "--direct_running_mode", "multi_processing"))
    assert summary.stored == len(good)
    one, two = stored_vectors(tmp, model, good), stored_vectors(tmp_path, model, good)
    assert set(two) == set(good)
    for image_id in good:
        assert np.allclose(one[image_id], two[image_id], atol=1e-5), image_id


def test_reports_get_the_text_towers_vectors_and_image_to_report_ranks_by_them(
        archive, ingested, capsys, tmp_path):
    """``dicomvec reports --provider openclip``, then ``search --image --target reports``: the
    reports come back in the order of the model's image vector · text vector of each report's
    embedded text (both recomputed here with open_clip)."""
    from dicomvec.pipeline.reports import run_reports
    from dicomvec.reports.samples import sample_texts
    _, good, _ = archive
    _, tmp, model = ingested
    texts = sample_texts()
    for index, text in enumerate(texts.values()):
        folder = tmp_path / "files" / "p10" / f"p1000000{index}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s5000000{index}.txt").write_text(text)
    summary = run_reports(["--input", f"{tmp_path}/files/**/s*.txt",
                           "--sink", f"sqlite:///{tmp}/db.sqlite",
                           "--dead-letter", str(tmp_path / "dl"), "--provider", "openclip",
                           "--openclip-model", str(model), "--device", "cpu"])
    assert summary.embedded == len(texts)
    image_id, path = sorted(good.items())[0]
    hits = search(capsys, tmp, model, "--image", str(path), "--target", "reports")["results"]
    assert len(hits) == len(texts)
    ref = reference("folder", model)
    query = image_vector(ref, model_pixels(path))
    want = sorted(hits, key=lambda hit: -float(np.dot(query, text_vector(ref,
                                                                          hit["EmbeddedText"]))))
    assert [hit["StudyID"] for hit in hits] == [hit["StudyID"] for hit in want]
