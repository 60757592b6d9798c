"""`dicomvec serve` over plain HTTP (Flask's test client, in process): the pages answer with the
engine's results, and the error paths — no/bad token, another Host, oversized upload, unknown
ImageID, path traversal, a missing image file — answer with the right status and never open a
path that is not a stored image's. The real-browser tests are tests/test_serve_browser.py."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.search import SearchRequest, run_search
from dicomvec.serve import images as serve_images
from dicomvec.serve.app import ServeSettings, create_app
from dicomvec.serve.images import Renderer
from tests.serve_fixtures import MISSING_ID, fill_archive, impression_of, serve_flags
from tests.sinks import SINKS, sink_url

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module", params=SINKS)
def archive(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    sink = sink_url(request.param, request, root)
    return root, sink, fill_archive(root, sink)


def _options(sink):
    return DicomvecOptions(serve_flags(sink))


def _client(sink, **settings):
    defaults = {"allowed_hosts": ("localhost:8765", "127.0.0.1:8765")}
    defaults.update(settings)
    app = create_app(ServeSettings(options=_options(sink), **defaults))
    return app, app.test_client()


def _get(client, url, **kw):
    return client.get(url, base_url="http://127.0.0.1:8765", **kw)


def _post(client, url, **kw):
    return client.post(url, base_url="http://127.0.0.1:8765", **kw)


def _ids(html: str):
    return re.findall(r'<figure class="card" data-image-id="([^"]+)"', html)


@pytest.fixture()
def opened(monkeypatch):
    """Every path the renderer and the header reader open."""
    paths = []
    render_path = Renderer.render_path
    header_fields = serve_images.header_fields

    def spy_render(self, path, size):
        paths.append(path)
        return render_path(self, path, size)

    def spy_header(path):
        paths.append(path)
        return header_fields(path)
    monkeypatch.setattr(Renderer, "render_path", spy_render)
    monkeypatch.setattr("dicomvec.serve.app.header_fields", spy_header)
    return paths


def test_home_page_shows_the_archive(archive):
    root, sink, stored = archive
    _, client = _client(sink)
    page = _get(client, "/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert set(_ids(html)) == {s.image_id for s in stored} | {MISSING_ID}
    assert "non-semantic" in html and 'id="text" name="text" type="search"' in html
    assert "disabled" in html.split('id="text"')[1].split(">")[0]  # the text box, and why
    assert "text search needs a semantic model" in html
    assert page.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_upload_answers_as_the_engine_and_is_not_kept(archive, tmp_path):
    root, sink, stored = archive
    app, client = _client(sink)
    query = stored[2]
    expected = run_search(SearchRequest(image=query.path, k=5), _options(sink))
    before = sorted(p for p in root.rglob("*"))
    with open(query.path, "rb") as f:
        page = _post(client, "/search", data={"dicom": (f, "../../evil.dcm"), "k": "5"},
                     content_type="multipart/form-data")
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html
    assert _ids(html) == [r.hit.ImageID for r in expected.results]
    assert _ids(html)[0] == query.image_id and "1.0000" in html
    assert sorted(p for p in root.rglob("*")) == before  # nothing written into the archive
    assert os.listdir(app.extensions["dicomvec"]["upload_dir"]) == []  # the copy is gone
    assert "evil.dcm" in html and "../" not in html.split('id="query"')[1].split("</div>")[0]


def test_more_like_this_and_view_filter(archive):
    root, sink, stored = archive
    _, client = _client(sink)
    query = stored[0]
    page = _get(client, f"/search?like={query.image_id}&k=3")
    assert page.status_code == 200
    ids = _ids(page.get_data(as_text=True))
    assert ids[0] == query.image_id and len(ids) == 3
    view = stored[1].view
    html = _get(client, f"/search?like={query.image_id}&k=20&view={view}").get_data(as_text=True)
    wanted = {s.image_id for s in stored if s.view == view}
    assert set(_ids(html)) == wanted


def test_results_show_the_study_report(archive):
    root, sink, stored = archive
    _, client = _client(sink)
    with_report = next(s for s in stored if s.impression)
    html = _get(client, f"/search?like={with_report.image_id}&k=1").get_data(as_text=True)
    assert impression_of(with_report.study) in html
    without = next(s for s in stored if not s.impression)
    html = _get(client, f"/search?like={without.image_id}&k=1").get_data(as_text=True)
    assert "no report stored for this study" in html


def test_detail_page(archive):
    root, sink, stored = archive
    _, client = _client(sink)
    query = next(s for s in stored if s.impression)
    page = _get(client, f"/image/{query.image_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert impression_of(query.study) in html and f"Findings of study {query.study}." in html
    assert "Transfer syntax" in html and "Photometric interpretation" in html
    neighbours = _ids(html.split('id="neighbours"')[1])
    assert query.image_id not in neighbours and len(neighbours) == len(stored)  # + the gone row
    large = _get(client, f"/render/{query.image_id}.png?size=large")
    assert large.status_code == 200 and large.mimetype == "image/png"
    assert large.get_data()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thumbnail_text_query_is_refused_with_the_reason(archive):
    root, sink, _ = archive
    _, client = _client(sink)
    page = _get(client, "/search?text=pleural+effusion")
    assert page.status_code == 400
    assert "text search needs a semantic model: the &#39;thumbnail&#39; provider" in \
        page.get_data(as_text=True)
    reports = _get(client, "/search?like=" + MISSING_ID + "&target=reports")
    assert reports.status_code == 400


def test_missing_image_file_is_a_placeholder(archive):
    root, sink, stored = archive
    _, client = _client(sink)
    thumb = _get(client, f"/render/{MISSING_ID}.png")
    assert thumb.status_code == 200 and thumb.headers["X-Dicomvec-Placeholder"]
    assert thumb.get_data()[:4] == b"\x89PNG"
    page = _get(client, f"/image/{MISSING_ID}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "the file cannot be read" in html
    # "more like this" searches with the stored vector: the file is not needed
    like = _get(client, f"/search?like={MISSING_ID}&k=3")
    html = like.get_data(as_text=True)
    assert like.status_code == 200, html
    assert set(_ids(html)[:2]) == {MISSING_ID, stored[0].image_id}  # the same stored vector
    assert "1.0000" in html
    neighbours = _ids(page.get_data(as_text=True).split('id="neighbours"')[1])
    assert stored[0].image_id in neighbours  # its page lists its neighbours too


@pytest.mark.parametrize("path", [
    "/image/nope", "/render/nope.png", "/search?like=nope",
    "/render/..%2F..%2F..%2Fetc%2Fpasswd.png", "/image/..%2F..%2Fetc%2Fpasswd",
    "/search?like=/etc/passwd", "/search?like=../../setup.py",
    "/render/%2Fetc%2Fpasswd.png?size=large", "/static/../setup.py", "/static/..%2Fapp.py",
])
def test_unknown_ids_and_path_traversal_open_nothing(archive, opened, path):
    root, sink, _ = archive
    _, client = _client(sink)
    page = _get(client, path)
    assert page.status_code == 404, (path, page.status_code)
    assert opened == []
    assert b"root:" not in page.get_data() and b"setup(" not in page.get_data()


def test_bad_parameters(archive):
    root, sink, stored = archive
    _, client = _client(sink)
    like = stored[0].image_id
    for query in (f"like={like}&k=0", f"like={like}&k=1000", f"like={like}&k=x",
                  f"like={like}&target=tables", f"like={like}&view=%3Cscript%3E"):
        page = _get(client, "/search?" + query)
        assert page.status_code == 400, query
        assert "<script>" not in page.get_data(as_text=True)
    assert _get(client, f"/render/{like}.png?size=huge").status_code == 400


def test_oversized_upload_is_refused(archive):
    root, sink, stored = archive
    app, client = _client(sink, max_upload=64 << 10)
    page = _post(client, "/search", data={"dicom": (io.BytesIO(b"\0" * (200 << 10)), "big.dcm")},
                 content_type="multipart/form-data")
    assert page.status_code == 413
    assert "larger than the limit of 0.0625 MB" in page.get_data(as_text=True)
    assert os.listdir(app.extensions["dicomvec"]["upload_dir"]) == []
    page = _post(client, "/search", data={"dicom": (io.BytesIO(b"not a dicom"), "x.dcm")},
                 content_type="multipart/form-data")
    assert page.status_code == 400 and "cannot use query image" in page.get_data(as_text=True)


def test_token_is_required_when_configured(archive):
    root, sink, stored = archive
    _, client = _client(sink, token=TOKEN, allowed_hosts=())
    no = _get(client, "/")
    assert no.status_code == 401 and stored[0].image_id not in no.get_data(as_text=True)
    assert 'id="text"' not in no.get_data(as_text=True)  # no forms, no views, no store name
    assert _get(client, "/?token=wrong").status_code == 403
    assert _get(client, f"/render/{stored[0].image_id}.png?token=wrong").status_code == 403
    assert _get(client, "/", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert _get(client, "/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    first = _get(client, f"/search?like={stored[0].image_id}&token={TOKEN}")
    assert first.status_code == 303 and "token" not in first.headers["Location"]
    assert "HttpOnly" in first.headers["Set-Cookie"]
    assert _get(client, first.headers["Location"]).status_code == 200  # the cookie now


def test_other_host_names_are_refused_without_a_token(archive):
    """A DNS-rebinding page reaches 127.0.0.1 under its own host name: refused."""
    root, sink, _ = archive
    _, client = _client(sink)
    assert client.get("/", base_url="http://evil.example:8765").status_code == 421
    assert client.get("/", base_url="http://localhost:8765").status_code == 200


def test_render_cache_is_bounded():
    class Info:
        def __init__(self, n):
            self.ImageID, self.ImagePath = f"id{n}", f"p{n}"
    renderer = Renderer("standard", cache_bytes=2500)
    renderer.render_path = lambda path, size: b"x" * 1000
    for n in range(5):
        assert renderer.png(Info(n), 10) == (b"x" * 1000, True)
    assert renderer.cached == (2, 2000)
    renderer.render_path = lambda path, size: None
    data, ok = renderer.png(Info(9), 32)
    assert not ok and data[:4] == b"\x89PNG"


# -- a semantic provider (the NV-CLIP contract server): text queries and image → report ------
@pytest.fixture(scope="module")
def nvclip_archive(tmp_path_factory):
    from dicomvec.search.queries import image_record
    from dicomvec.synthetic import generate
    from tests import nvclip_server as contract
    from tests.store_rows import make_report_row, make_row
    from dicomvec.io.stores import SinkConfig
    root = tmp_path_factory.mktemp("serve-nvclip")
    files = [f for f in generate(root / "sample", 5, size=(256, 212), syntaxes=("native",),
                                 seed=3) if not f.broken]
    sink = f"sqlite:///{root}/dicomvec.db"
    rows, reports = [], {}
    for index, f in enumerate(files):
        record = image_record(f.path, 224, "standard", "png")
        vector = contract.expected_vector(contract.image_input_string(record.encoded,
                                                                      record.mime))
        rows.append(make_row(index, provider="nvclip", view=f.view_position, vector=vector,
                             SubjectID=f.subject_id, StudyID=f.study_id, ImageID=f.dicom_id,
                             ImagePath=f.path))
        text = f"report text of study {f.study_id}"
        reports[f.study_id] = make_report_row(f.study_id, contract.expected_vector(text),
                                              text=text, SubjectID=f.subject_id)
    config = SinkConfig(url=sink)
    with config.reports() as store:
        store.init_schema(1024)
        assert store.upsert(list(reports.values())) == []
    with config.images() as store:
        store.init_schema(1024)
        assert store.upsert(rows) == []
    with contract.NVClipContractServer() as server:
        yield sink, files, server.url


def test_semantic_provider_text_and_image_to_report(nvclip_archive):
    sink, files, url = nvclip_archive
    options = DicomvecOptions(["--sink", sink, "--provider", "nvclip", "--nvclip-url", url])
    app = create_app(ServeSettings(options=options, allowed_hosts=("127.0.0.1:8765",)))
    client = app.test_client()
    home = _get(client, "/").get_data(as_text=True)
    assert "disabled" not in home.split('id="text"')[1].split(">")[0]
    assert "text search needs" not in home and "non-semantic" not in home
    text = "right lower lobe consolidation"
    expected = run_search(SearchRequest(text=text, k=4), options)
    page = _get(client, "/search?text=right+lower+lobe+consolidation&k=4")
    assert page.status_code == 200
    assert _ids(page.get_data(as_text=True)) == [r.hit.ImageID for r in expected.results]
    expected = run_search(SearchRequest(image=files[0].path, target="reports", k=3), options)
    page = _get(client, f"/search?like={files[0].dicom_id}&target=reports&k=3")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert re.findall(r'data-study-id="([^"]+)"', html) == \
        [r.hit.StudyID for r in expected.results]
    assert f"impression {expected.results[0].hit.StudyID}" in html
