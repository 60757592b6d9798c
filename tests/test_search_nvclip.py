"""Cross-modal search with the NV-CLIP provider against the local contract server.

The server's vectors are deterministic functions of each input string (``expected_vector``), so
the test computes on its own which stored image (or report) the server made closest to a query
and checks the search ranks it first — for text → image, image → report and text → report.
"""
from __future__ import annotations

import numpy as np
import pytest

from dicomvec.io.providers.nvclip import truncate_for_clip
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.tables import REPORTS
from tests.store_rows import lookup
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline.reports import run_reports
from dicomvec.pipeline.run import run_ingest
from dicomvec.reports import parse_report
from dicomvec.reports.samples import sample_texts, write_sample_reports
from dicomvec.search import SearchRequest, run_search
from dicomvec.search.queries import image_record
from dicomvec.synthetic import generate
from tests import nvclip_server as contract

COUNT = 6
QUERIES = ("right lower lobe consolidation", "large right pneumothorax", "no acute process")


@pytest.fixture(scope="module")
def server():
    with contract.NVClipContractServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def archive(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("nvclip-search")
    files = [f for f in generate(root / "sample", COUNT, size=(256, 224), syntaxes=("native",),
                                 seed=5) if not f.broken]
    write_sample_reports(root / "sample" / "files")
    sink = f"sqlite:///{root}/dicomvec.db"
    common = ["--sink", sink, "--dead-letter", str(root / "dead_letter"), "--provider", "nvclip",
              "--nvclip-url", server.url, "--batch-size", "4"]
    assert run_ingest(["--input", f"{root}/sample/files/**/*.dcm", *common]).stored == COUNT
    reports = run_reports(["--input", f"{root}/sample/files/**/s*.txt", *common])
    studies = {f.study_id for f in files}  # the generator may give two subjects one StudyID
    assert reports.embedded == reports.stored == len(studies) and reports.text_only == 0
    options = DicomvecOptions(["--sink", sink, "--provider", "nvclip", "--nvclip-url",
                               server.url])
    return root, sink, files, options


def _image_vector(path: str) -> np.ndarray:
    """The server's vector for an image, computed from the ingestion's model input."""
    record = image_record(path, 224, "standard", "png")
    return contract.expected_vector(contract.image_input_string(record.encoded,
                                                                          record.mime))


def test_text_to_image_returns_the_image_the_server_made_closest(archive):
    root, sink, files, options = archive
    images = {f.dicom_id: _image_vector(f.path) for f in files}
    with VectorStore(sink) as store:
        stored = store.vectors(list(images), "nvclip")
    for image_id, vector in images.items():  # what ingestion stored is what the server made
        np.testing.assert_allclose(stored[image_id], vector, atol=1e-6)
    for text in QUERIES:
        query = contract.expected_vector(text)
        expected = sorted(images, key=lambda i: -float(images[i] @ query))
        result = run_search(SearchRequest(text=text, k=COUNT), options)
        assert [r.hit.ImageID for r in result.results] == expected, text
        assert result.results[0].score == pytest.approx(float(images[expected[0]] @ query),
                                                        abs=1e-5)


def test_image_to_report_and_text_to_report(archive):
    root, sink, files, options = archive
    with VectorStore(sink, spec=REPORTS) as store:
        count = store.count("nvclip")
        rows = store.conn.execute("SELECT StudyID FROM MIMICCXRReports").fetchall()
        reports = lookup(store, [r[0] for r in rows])
    assert count == len(reports) > 1
    texts = {study: contract.expected_vector(hit.EmbeddedText)
             for study, hit in reports.items()}
    query = _image_vector(files[0].path)
    # studies may share a sample report text (equal vectors, tied scores): compare the ranking
    # by score, and each hit's score with its own study's vector
    expected_scores = sorted((float(texts[s] @ query) for s in texts), reverse=True)
    result = run_search(SearchRequest(image=files[0].path, target="reports", k=len(texts)),
                        options)
    assert sorted(r.hit.StudyID for r in result.results) == sorted(texts)
    assert [r.score for r in result.results] == pytest.approx(expected_scores, abs=1e-5)
    assert all(r.score == pytest.approx(float(texts[r.hit.StudyID] @ query), abs=1e-5)
               for r in result.results)
    text_query = contract.expected_vector(QUERIES[0])
    result = run_search(SearchRequest(text=QUERIES[0], target="reports", k=1), options)
    best = max(float(texts[s] @ text_query) for s in texts)
    assert result.results[0].score == pytest.approx(best, abs=1e-5)


def test_report_texts_are_embedded_exactly_as_stored(archive, server):
    """The server received each EmbeddedText verbatim: the provider did not cut it further."""
    root, sink, files, options = archive
    with VectorStore(sink, spec=REPORTS) as store:
        rows = store.conn.execute("SELECT StudyID FROM MIMICCXRReports").fetchall()
        reports = lookup(store, [r[0] for r in rows])
    assert all(hit.EmbeddedText in server.received for hit in reports.values())


def test_every_sample_fits_the_providers_own_token_limit():
    for name, text in sample_texts().items():
        embedded = parse_report(text, "files/p10/p10000001/s50000001.txt").embedded_text
        assert truncate_for_clip(embedded, 77) == (embedded, False), name
