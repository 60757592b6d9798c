"""Search on stored vectors: image → image self-retrieval, the query image's preprocessing, the
reports join, JSON output, the contact sheet, and the thumbnail provider refusing text."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicomvec import cli
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline.reports import run_reports
from dicomvec.pipeline.run import run_ingest
from dicomvec.reports.samples import write_sample_reports
from dicomvec.search import SearchRequest, run_search
from dicomvec.search.contact_sheet import HEADER, PAD, THUMB, render, sheet_size
from dicomvec.synthetic import generate
from tests.local_run import thumbnail_flags
from tests.sinks import SINKS, sink_url

REPO = Path(__file__).resolve().parents[1]
COUNT = 8
SIZE = (384, 320)


@pytest.fixture(scope="module", params=SINKS)
def archive(request, tmp_path_factory):
    """COUNT synthetic images ingested with the thumbnail provider, plus their sample reports
    (text-only rows, since thumbnail has no text tower), on each available sink.
    Returns (root, sink URL, files)."""
    root = tmp_path_factory.mktemp("search")
    files = [f for f in generate(root / "sample", COUNT, size=SIZE, syntaxes=("native", "rle"),
                                 seed=11) if not f.broken]
    sink = sink_url(request.param, request, root)
    common = thumbnail_flags(root, None, "--image-size", "160", sink=sink,
                             dead_letter=root / "dead_letter")
    summary = run_ingest(["--input", f"{root}/sample/files/**/*.dcm", "--run-id", "ingest",
                          *common])
    assert summary.stored == COUNT
    write_sample_reports(root / "sample" / "files")
    run_reports(["--input", f"{root}/sample/files/**/s*.txt", "--run-id", "reports", *common])
    return root, sink, files


def _options(sink, *flags):
    return DicomvecOptions(["--sink", sink, "--provider", "thumbnail", "--image-size", "160",
                            *flags])


def _noisy_copy(source: str, target: Path, seed: int, sigma_fraction: float = 0.02) -> Path:
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.astype(np.float64)
    top = float(2 ** int(ds.BitsStored) - 1)
    noisy = pixels + np.random.default_rng(seed).normal(0, sigma_fraction * top, pixels.shape)
    ds.PixelData = np.clip(noisy, 0, top).astype(np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def test_noisy_copy_of_a_stored_image_comes_back_first(archive, tmp_path):
    root, sink, files = archive
    for index, stored in enumerate(files):
        query = _noisy_copy(stored.path, tmp_path / f"query{index}.dcm", seed=index)
        result = run_search(SearchRequest(image=str(query), k=3), _options(sink))
        assert [r.rank for r in result.results] == [1, 2, 3]
        assert result.results[0].hit.ImageID == stored.dicom_id, f"query {index}"
        assert result.results[0].score > result.results[1].score


def test_query_image_goes_through_the_ingestion_preprocessing(archive):
    """The stored file itself, queried with the ingestion's flags, matches its row exactly."""
    root, sink, files = archive
    for stored in files[:3]:
        result = run_search(SearchRequest(image=stored.path, k=1), _options(sink))
        assert result.results[0].hit.ImageID == stored.dicom_id
        assert result.results[0].score == pytest.approx(1.0, abs=1e-6)
    # the check is sharp: preprocessing the query differently from ingestion is visible
    for flags in (["--image-size", "224"], ["--normalization", "mimic-jpg"]):
        other = run_search(SearchRequest(image=files[0].path, k=1), _options(sink, *flags))
        assert other.results[0].score < 1.0 - 1e-5, flags


def test_view_filter_and_k(archive):
    root, sink, files = archive
    views = {f.dicom_id: f.view_position for f in files}
    query = files[0].path
    for view in sorted(set(views.values())):
        result = run_search(SearchRequest(image=query, k=COUNT, view=view.lower()),
                            _options(sink))
        assert {r.hit.ImageID for r in result.results} == \
            {i for i, v in views.items() if v == view}
        assert all(r.hit.ViewPosition == view for r in result.results)
    assert len(run_search(SearchRequest(image=query, k=2), _options(sink)).results) == 2


def test_with_reports_joins_each_hit_to_its_study_report(archive):
    root, sink, files = archive
    result = run_search(SearchRequest(image=files[1].path, k=COUNT, with_reports=True),
                        _options(sink))
    assert len(result.results) == COUNT
    subjects_per_study = {}
    for f in files:
        subjects_per_study.setdefault(f.study_id, set()).add(f.subject_id)
    for item in result.results:
        assert item.joined
        study = Path(item.hit.ImagePath).parent
        text = study.with_name(study.name + ".txt").read_text()
        if len(subjects_per_study[item.hit.StudyID]) == 1:
            assert item.report is not None
        if item.report is None:  # a StudyID shared by two subjects is never joined wrongly
            continue
        assert item.report.StudyID == item.hit.StudyID
        assert item.report.SubjectID == item.hit.SubjectID
        assert item.report.EmbeddedText.split()[0] in text
    assert any(item.report is not None for item in result.results)


def test_cli_json_output(archive, capsys):
    root, sink, files = archive
    rc = cli.main(["search", "--image", files[2].path, "--sink", sink, "--provider", "thumbnail",
                   "--image-size", "160", "--k", "4", "--with-reports", "--json"])
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["query"]["kind"] == "image → image" and payload["provider"] == "thumbnail"
    assert payload["semantic"] is False and payload["table"] == "MIMICCXRImages"
    results = payload["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert results[0]["ImageID"] == files[2].dicom_id
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-6)
    assert all("report" in r for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_contact_sheet_is_a_png_grid_of_the_hits(archive, tmp_path, capsys):
    root, sink, files = archive
    target = tmp_path / "sheet.png"
    rc = cli.main(["search", "--image", files[0].path, "--sink", sink, "--provider", "thumbnail",
                   "--image-size", "160", "--k", "7", "--columns", "3",
                   "--contact-sheet", str(target)])
    assert rc == 0
    assert "contact sheet" in capsys.readouterr().out
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as sheet:
        sheet.verify()
    with Image.open(target) as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == sheet_size(7, 3) == (3 * (THUMB + 2 * PAD),
                                                  HEADER + 3 * (THUMB + 56 + 2 * PAD))
        pixels = np.asarray(sheet.convert("L"), dtype=np.float64)
    cell_w, cell_h = THUMB + 2 * PAD, THUMB + 56 + 2 * PAD
    for index in range(7):  # every hit's cell shows an image, the two unused cells are empty
        x, y = (index % 3) * cell_w + PAD, HEADER + (index // 3) * cell_h + PAD
        assert pixels[y:y + THUMB, x:x + THUMB].std() > 10, index
    for index in (7, 8):
        x, y = (index % 3) * cell_w + PAD, HEADER + (index // 3) * cell_h + PAD
        assert pixels[y:y + THUMB, x:x + THUMB].std() == 0, index


def test_contact_sheet_survives_a_missing_image(archive, tmp_path):
    root, sink, files = archive
    result = run_search(SearchRequest(image=files[0].path, k=2), _options(sink))
    moved = Path(result.results[1].hit.ImagePath)
    backup = tmp_path / "moved.dcm"
    os.rename(moved, backup)
    try:
        sheet = render(result, columns=5)
    finally:
        os.rename(backup, moved)
    assert sheet.size == sheet_size(2, 5)
    cell = np.asarray(sheet.convert("L"))[HEADER + PAD:HEADER + PAD + THUMB,
                                          3 * PAD + THUMB:3 * PAD + 2 * THUMB]
    assert abs(float(np.median(cell)) - 90) < 2  # grey placeholder, not a crash


def test_thumbnail_provider_refuses_text_queries_with_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "dicomvec.cli", "search", "--text",
         "right lower lobe consolidation", "--provider", "thumbnail",
         "--sink", f"sqlite:///{tmp_path}/empty.db"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dicomvec: error:")]
    assert len(errors) == 1
    assert "thumbnail" in errors[0] and "non-semantic" in errors[0] and "nvclip" in errors[0]


def test_thumbnail_provider_refuses_report_search(archive, capsys):
    root, sink, files = archive
    rc = cli.main(["search", "--image", files[0].path, "--target", "reports", "--sink", sink,
                   "--provider", "thumbnail"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "searching reports needs a semantic model" in err and "Traceback" not in err


def test_bad_query_image_and_missing_table_are_user_errors(tmp_path, capsys):
    not_dicom = tmp_path / "scan.dcm"
    not_dicom.write_bytes(b"not a dicom file at all")
    rc = cli.main(["search", "--image", str(not_dicom), "--sink",
                   f"sqlite:///{tmp_path}/x.db", "--provider", "thumbnail"])
    assert rc == 2
    assert "cannot use query image" in capsys.readouterr().err
    real = tmp_path / "real.dcm"
    generate(tmp_path / "one", 1, size=(128, 128), syntaxes=("native",), seed=1)
    real = next((tmp_path / "one").rglob("*.dcm"))
    rc = cli.main(["search", "--image", str(real), "--sink", f"sqlite:///{tmp_path}/x.db",
                   "--provider", "thumbnail"])
    assert rc == 2  # no database: an error, and no empty file left behind
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()
    import sqlite3
    sqlite3.connect(tmp_path / "x.db").close()  # a database without the table
    rc = cli.main(["search", "--image", str(real), "--sink", f"sqlite:///{tmp_path}/x.db",
                   "--provider", "thumbnail"])
    assert rc == 2
    assert "cannot search MIMICCXRImages" in capsys.readouterr().err


_NO_BEAM = """
import sys
from dicomvec import cli
rc = cli.main(sys.argv[1:])
import dicomvec.serve.app, dicomvec.commands.serve  # the page's import path too
loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam')
print('BEAM', len(loaded), loaded[:3])
sys.exit(rc)
"""


def test_a_local_search_does_not_import_beam(archive, tmp_path):
    """A search of a local image with dicomvec's own flags (SQLite or PostgreSQL, the thumbnail
    provider) starts without Beam (seconds of imports); a Beam option (S3) still works."""
    root, sink, files = archive
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ["search", "--image", files[0].path, "--sink", sink, "--provider", "thumbnail",
            "--image-size", "160", "--k", "2", "--json"]
    proc = subprocess.run([sys.executable, "-c", _NO_BEAM, *args], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout[:proc.stdout.rindex("BEAM")])["results"][0]["ImageID"] == \
        files[0].dicom_id
    assert "BEAM 0 []" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", _NO_BEAM, *args, "--s3_region_name",
                           "eu-west-1"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "BEAM 0" not in proc.stdout  # Beam's S3 option: the Beam route, same answer
    proc = subprocess.run([sys.executable, "-c", _NO_BEAM, *args, "--sinks", sink],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "did you mean --sink" in proc.stderr


def test_like_searches_with_the_stored_vector_even_when_the_file_is_gone(
        archive, tmp_path, capsys):
    """``--like IMAGE_ID`` (and the page's "more like this") query with the vector stored for
    that ImageID and provider: the same ranking as querying its file, and still answered once
    the file has been moved away; an ImageID without a vector of that provider is one line."""
    root, sink, files = archive
    stored = files[2]
    by_file = run_search(SearchRequest(image=stored.path, k=4), _options(sink))
    moved = tmp_path / "moved.dcm"
    os.rename(stored.path, moved)
    try:
        by_id = run_search(SearchRequest(like=stored.dicom_id, k=4), _options(sink))
        assert [r.hit.ImageID for r in by_id.results] == \
            [r.hit.ImageID for r in by_file.results]
        assert by_id.results[0].hit.ImageID == stored.dicom_id
        assert by_id.results[0].score == pytest.approx(1.0, abs=1e-6)
        view = run_search(SearchRequest(like=stored.dicom_id, k=8, view="LATERAL"),
                          _options(sink))
        assert {r.hit.ViewPosition for r in view.results} <= {"LATERAL"}
        rc = cli.main(["search", "--like", stored.dicom_id, "--sink", sink, "--provider",
                       "thumbnail", "--k", "2", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["query"]["like"] == stored.dicom_id
        assert out["results"][0]["ImageID"] == stored.dicom_id
        # provider-filtered: no nvclip vector is stored for it
        rc = cli.main(["search", "--like", stored.dicom_id, "--sink", sink, "--provider",
                       "nvclip"])
        assert rc == 2
        assert f"no stored image {stored.dicom_id!r} with a nvclip vector" in \
            capsys.readouterr().err
    finally:
        os.rename(moved, stored.path)
