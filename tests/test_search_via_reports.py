"""Searching through a reports table another tool made (issue 16, the read side).

The predecessor's ``MIMICCXRReports`` has only SubjectID, StudyID, Findings, Impression and a
3072-d OpenAI ``text-embedding-3-large`` Vector (IDs spelled ``p…``/``s…``), stored the ways
such a tool plausibly would: JSON text, float64 and float32 BLOBs, comma-separated text (SQLite);
pgvector ``vector(3072)``, ``double precision[]``, ``real[]``, JSON text (PostgreSQL); ``VECTOR
(DOUBLE, 3072)``, comma-separated and JSON VARCHAR (IRIS: live only, when DICOMVEC_IRIS_URL is
set, in a fresh schema). On each database:

* ``--via-reports`` embeds the query at the OpenAI contract server and returns the images of the
  nearest studies, in exactly the order computed here from the server's vectors (report score,
  then view PA, AP, LATERAL, then StudyID, ImageID);
* ``--with-reports`` and image → report work against a table with only the four text columns;
* the predecessor's rows are byte-identical after every search command;
* a model of another length is refused before any request is paid for.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from dicomvec import cli
from dicomvec.errors import UserError
from dicomvec.io.providers.openai_client import API_KEY_ENV, OpenAISettings
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline.run import run_ingest
from dicomvec.search import SearchRequest, run_search
from dicomvec.synthetic import generate
from tests.local_run import thumbnail_flags
from tests.openai_server import Fault, OpenAIContractServer
from tests.sinks import WITH_IRIS, sink_url

COUNT = 10
DIM = 3072
#: the documented tie order among a study's images (not imported: the test must be able to fail)
VIEW_ORDER = ("PA", "AP", "LATERAL", "LL")
QUERIES = ("right lower lobe consolidation", "small left pleural effusion", "no acute process")
#: per sink: {table name: how its Vector is stored}; the first is the default table name
STORAGE = {"sqlite": {"MIMICCXRReports": "json", "ReportsF64": "blob64", "ReportsCsv": "csv",
                      "ReportsF32": "blob32"},
           "postgresql": {"MIMICCXRReports": "pgvector", "ReportsArray": "array",
                          "ReportsJson": "json", "ReportsReal": "real"},
           "iris": {"MIMICCXRReports": "vector", "ReportsCsv": "csv", "ReportsJson": "json"}}


def _findings(study: str) -> str:
    return f"Findings of study {study}: lungs {int(study) % 7} and heart {int(study) % 5}."


def _impression(study: str) -> str:
    return f"Impression {study}: {['clear', 'effusion', 'consolidation'][int(study) % 3]}."


def _embedded(study: str) -> str:
    """What the predecessor embedded for a study (its texts; irrelevant to dicomvec)."""
    return f"{_findings(study)} {_impression(study)}"


# -- the predecessor's tables, written with raw SQL as another tool would ---------------------
def _create_sqlite(conn, table: str, storage: str, rows: List[tuple]) -> None:
    vector_type = {"json": "TEXT", "csv": "TEXT", "blob64": "BLOB", "blob32": "BLOB",
                   None: None}[storage]
    columns = "SubjectID VARCHAR(50), StudyID VARCHAR(50) PRIMARY KEY, Findings TEXT, " \
              "Impression TEXT" + (f", Vector {vector_type}" if vector_type else "")
    conn.execute(f"CREATE TABLE {table} ({columns})")
    for subject, study, findings, impression, vector in rows:
        values = [subject, study, findings, impression]
        if storage == "json":
            values.append(json.dumps([float(v) for v in vector]))
        elif storage == "csv":
            values.append(",".join(repr(float(v)) for v in vector))
        elif storage == "blob64":
            values.append(np.asarray(vector, dtype="<f8").tobytes())
        elif storage == "blob32":
            values.append(np.asarray(vector, dtype="<f4").tobytes())
        conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values))})", values)
    conn.commit()


def _create_postgres(conn, table: str, storage: str, rows: List[tuple]) -> None:
    vector_type = {"pgvector": f"vector({DIM})", "array": "double precision[]",
                   "real": "real[]", "json": "text", None: None}[storage]
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute("CREATE SCHEMA IF NOT EXISTS VectorSearch")
    columns = "SubjectID VARCHAR(50), StudyID VARCHAR(50) PRIMARY KEY, Findings TEXT, " \
              "Impression TEXT" + (f", Vector {vector_type}" if vector_type else "")
    conn.execute(f"CREATE TABLE VectorSearch.{table} ({columns})")
    for subject, study, findings, impression, vector in rows:
        values = [subject, study, findings, impression]
        marker = ""
        if storage == "pgvector":
            values.append("[" + ",".join(repr(float(v)) for v in vector) + "]")
            marker = ", %s::vector"
        elif storage in ("array", "real"):
            values.append([float(v) for v in vector])
            marker = ", %s"
        elif storage == "json":
            values.append(json.dumps([float(v) for v in vector]))
            marker = ", %s"
        conn.execute(f"INSERT INTO VectorSearch.{table} VALUES (%s, %s, %s, %s{marker})", values)


def _iris_connection(sink: str):
    from dicomvec.io.stores.dialects import dialect_for_url
    return dialect_for_url(sink, schema="VectorSearch").connect()


def _create_iris(conn, schema: str, table: str, storage: str, rows: List[tuple]) -> None:
    vector_type = {"vector": f"VECTOR(DOUBLE, {DIM})", "csv": "VARCHAR(200000)",
                   "json": "VARCHAR(200000)", None: None}[storage]
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {schema}.{table} (SubjectID VARCHAR(50), StudyID VARCHAR(50) "
                "PRIMARY KEY, Findings VARCHAR(2000), Impression VARCHAR(2000)"
                + (f", Vector {vector_type})" if vector_type else ")"))
    for subject, study, findings, impression, vector in rows:
        values = [subject, study, findings, impression]
        marker = ""
        if storage == "vector":
            values.append(",".join(repr(float(v)) for v in vector))
            marker = f", TO_VECTOR(?, DOUBLE, {DIM})"
        elif storage == "csv":
            values.append(",".join(repr(float(v)) for v in vector))
            marker = ", ?"
        elif storage == "json":
            values.append(json.dumps([float(v) for v in vector]))
            marker = ", ?"
        cur.execute(f"INSERT INTO {schema}.{table} VALUES (?, ?, ?, ?{marker})", values)
    conn.commit()


def _snapshot(kind: str, sink: str, table: str, schema: str = "VectorSearch"):
    """Every row of the predecessor's table, exactly as stored, plus its column list."""
    if kind == "iris":
        conn = _iris_connection(sink)
        try:
            cur = conn.cursor()
            cur.execute("SELECT COLUMN_NAME, DATA_TYPE FROM INFORMATION_SCHEMA.COLUMNS WHERE "
                        "TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                        [schema, table])
            columns = [tuple(r) for r in cur.fetchall()]
            cur.execute(f"SELECT * FROM {schema}.{table} ORDER BY StudyID")
            return columns, [tuple(str(v) for v in r) for r in cur.fetchall()]
        finally:
            conn.close()
    if kind == "sqlite":
        import sqlite3
        with sqlite3.connect(sink[len("sqlite:///"):]) as conn:
            return (conn.execute(f"PRAGMA table_info({table})").fetchall(),
                    conn.execute(f"SELECT * FROM {table} ORDER BY StudyID").fetchall())
    import psycopg
    with psycopg.connect(sink) as conn:
        columns = conn.execute(
            "SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = "
            "'vectorsearch' AND table_name = %s ORDER BY ordinal_position",
            [table.lower()]).fetchall()
        rows = conn.execute(f"SELECT t::text FROM VectorSearch.{table} t ORDER BY StudyID"
                            ).fetchall()
        return columns, rows


@pytest.fixture(scope="module")
def openai_server():
    key = "testkey-openai-TESTSECRET-" + secrets.token_hex(16)
    with OpenAIContractServer(api_key=key) as server:
        server.key = key
        yield server


@pytest.fixture(scope="module", params=WITH_IRIS)
def archive(request, tmp_path_factory, openai_server):
    """COUNT images ingested by dicomvec (thumbnail) + the predecessor's report tables.

    Returns a namespace dict: kind, sink, files, report vectors by StudyID, tables."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"via-{kind}")
    sink = sink_url(kind, request, root)  # IRIS: in a fresh schema DicomvecVia…
    schema = f"DicomvecVia{secrets.token_hex(4)}" if kind == "iris" else "VectorSearch"
    files = [f for f in generate(root / "sample", COUNT, size=(192, 160),
                                 syntaxes=("native",), seed=16) if not f.broken]
    summary = run_ingest(thumbnail_flags(
        root, None, "--sink-schema", schema, "--image-size", "128",
        input=f"{root}/sample/files/**/*.dcm", sink=sink, dead_letter=root / "dead_letter"))
    assert summary.stored == len(files)
    # one report per (subject, study); the last study has no report; one report has no images
    pairs = list(dict.fromkeys((f.subject_id, f.study_id) for f in files))
    pairs = pairs[:-1] + [("19999999", "59999999")]
    vectors = {study: openai_server.vector(_embedded(study)) for _, study in pairs}
    rows = [(f"p{subject}", f"s{study}", _findings(study), _impression(study), vectors[study])
            for subject, study in pairs]
    if kind == "sqlite":
        import sqlite3
        with sqlite3.connect(sink[len("sqlite:///"):]) as conn:
            for table, storage in STORAGE[kind].items():
                _create_sqlite(conn, table, storage, rows)
            _create_sqlite(conn, "ReportsMinimal", None, rows)
    elif kind == "iris":
        conn = _iris_connection(sink)
        try:
            for table, storage in STORAGE[kind].items():
                _create_iris(conn, schema, table, storage, rows)
            _create_iris(conn, schema, "ReportsMinimal", None, rows)
        finally:
            conn.close()
    else:
        import psycopg
        with psycopg.connect(sink, autocommit=True) as conn:
            for table, storage in STORAGE[kind].items():
                _create_postgres(conn, table, storage, rows)
            _create_postgres(conn, "ReportsMinimal", None, rows)
    tables = list(STORAGE[kind]) + ["ReportsMinimal"]
    before = {table: _snapshot(kind, sink, table, schema) for table in tables}
    yield dict(kind=kind, sink=sink, files=files, vectors=vectors, tables=tables, schema=schema,
               root=root, subjects=dict((study, subject) for subject, study in pairs))
    try:
        for table in tables:  # after every search command of the module: byte-identical
            assert _snapshot(kind, sink, table, schema) == before[table], table
    finally:
        if kind == "iris":  # leave the live server as found
            conn = _iris_connection(sink)
            try:
                for table in tables + ["MIMICCXRImages"]:
                    conn.cursor().execute(f"DROP TABLE IF EXISTS {schema}.{table}")
                conn.commit()
            finally:
                conn.close()


@pytest.fixture
def key(openai_server, monkeypatch) -> str:
    monkeypatch.setenv(API_KEY_ENV, openai_server.key)
    return openai_server.key


def _options(archive) -> DicomvecOptions:
    return DicomvecOptions(["--sink", archive["sink"], "--sink-schema", archive["schema"],
                            "--provider", "thumbnail", "--image-size", "128"])


def _settings(server, **kwargs) -> OpenAISettings:
    return OpenAISettings(url=server.url, timeout_s=10, max_attempts=3, backoff_base_s=0.01,
                          backoff_max_s=0.05, **kwargs)


def _expected_images(archive, query: np.ndarray, view=None) -> List[tuple]:
    """(ImageID, score) in the order the search must return, computed from the vectors."""
    def rank(v: str) -> int:
        v = (v or "").upper()
        return VIEW_ORDER.index(v) if v in VIEW_ORDER else len(VIEW_ORDER) + (0 if v else 1)
    out = []
    for f in archive["files"]:
        vec = archive["vectors"].get(f.study_id)
        if vec is None or archive["subjects"].get(f.study_id) != f.subject_id:
            continue
        if view and f.view_position != view:
            continue
        score = float(vec @ query) / float(np.linalg.norm(vec) * np.linalg.norm(query))
        out.append((-score, rank(f.view_position), f.study_id, f.dicom_id))
    return [(image_id, -neg) for neg, _, _, image_id in sorted(out)]


@pytest.mark.parametrize("table_index", [0, 1, 2, 3])
def test_via_reports_returns_the_nearest_studies_images_in_order(archive, openai_server, key,
                                                                table_index):
    if table_index >= len(STORAGE[archive["kind"]]):
        pytest.skip(f"{archive['kind']} is tested with {len(STORAGE[archive['kind']])} forms")
    table = list(STORAGE[archive["kind"]])[table_index]
    for text in QUERIES:
        query = openai_server.vector(text)
        expected = _expected_images(archive, query)
        assert len(expected) >= 6
        result = run_search(SearchRequest(text=text, k=len(expected), via_reports=True,
                                          reports_table=table),
                            _options(archive), _settings(openai_server))
        assert [r.hit.ImageID for r in result.results] == [i for i, _ in expected], text
        assert [r.score for r in result.results] == pytest.approx([s for _, s in expected],
                                                                  abs=1e-5)
        assert result.via["dimension"] == DIM and result.via["unreadable_vectors_skipped"] == 0
    assert openai_server.bodies[-1] == {"input": [QUERIES[-1]], "model": "text-embedding-3-large",
                                        "encoding_format": "float"}


def test_via_reports_k_view_filter_and_joined_report(archive, openai_server, key):
    query = openai_server.vector(QUERIES[0])
    views = sorted({f.view_position for f in archive["files"]})
    for view in views:
        expected = _expected_images(archive, query, view)
        result = run_search(SearchRequest(text=QUERIES[0], k=2, view=view, via_reports=True,
                                          with_reports=True),
                            _options(archive), _settings(openai_server))
        assert [r.hit.ImageID for r in result.results] == [i for i, _ in expected[:2]]
        for item in result.results:
            assert item.hit.ViewPosition == view
            assert item.report.StudyID == item.hit.StudyID  # 's…' read back as dicomvec's ID
            assert item.report.Findings == _findings(item.hit.StudyID)
            assert item.report.Impression == _impression(item.hit.StudyID)


def test_via_reports_target_reports_returns_their_reports(archive, openai_server, key):
    query = openai_server.vector(QUERIES[1])
    scores = {s: float(v @ query) / float(np.linalg.norm(v) * np.linalg.norm(query))
              for s, v in archive["vectors"].items()}
    expected = sorted(scores, key=lambda s: (-scores[s], s))[:3]
    result = run_search(SearchRequest(text=QUERIES[1], k=3, via_reports=True, target="reports"),
                        _options(archive), _settings(openai_server))
    assert [r.hit.StudyID for r in result.results] == expected
    assert [r.score for r in result.results] == pytest.approx([scores[s] for s in expected],
                                                              abs=1e-5)


def test_cli_via_reports_json_and_contact_sheet(archive, openai_server, key, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    rc = cli.main(["search", "--text", QUERIES[2], "--via-reports", "--text-url",
                   openai_server.url, "--k", "3", "--json", "--contact-sheet", str(sheet),
                   "--sink", archive["sink"], "--sink-schema", archive["schema"],
                   "--image-size", "128"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["query"]["kind"] == "text → image (via reports)"
    assert payload["embedding_model"] == "text-embedding-3-large"
    assert payload["via_reports"]["dimension"] == DIM
    expected = _expected_images(archive, openai_server.vector(QUERIES[2]))
    assert [r["ImageID"] for r in payload["results"]] == [i for i, _ in expected[:3]]
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert key not in captured.out + captured.err


def test_with_reports_and_image_to_report_on_the_minimal_table(archive, capsys):
    files = archive["files"]
    query = files[0]
    result = run_search(SearchRequest(image=query.path, k=COUNT, with_reports=True,
                                      reports_table="ReportsMinimal"), _options(archive))
    assert result.results[0].hit.ImageID == query.dicom_id
    joined = 0
    for item in result.results:
        own = archive["subjects"].get(item.hit.StudyID) == item.hit.SubjectID
        if own:
            joined += 1
            assert item.report.Findings == _findings(item.hit.StudyID)
            assert item.report.SubjectID == item.hit.SubjectID
        else:
            assert item.report is None
    assert joined >= 6
    # image → report: the nearest images' studies, each report scored by its best image
    result = run_search(SearchRequest(image=query.path, k=3, target="reports",
                                      reports_table="ReportsMinimal"), _options(archive))
    assert result.results[0].hit.StudyID == query.study_id
    assert result.results[0].score == pytest.approx(1.0, abs=1e-6)
    assert result.results[0].hit.Impression == _impression(query.study_id)
    assert [r.score for r in result.results] == sorted((r.score for r in result.results),
                                                       reverse=True)
    rc = cli.main(["search", "--image", query.path, "--target", "reports", "--sink",
                   archive["sink"], "--sink-schema", archive["schema"], "--image-size", "128",
                   "--k", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and _impression(query.study_id)[:40] in out and "best image" in out


def test_model_of_another_length_is_refused_before_any_request(archive, openai_server, key):
    before = len(openai_server.log)
    for settings in (_settings(openai_server, model="text-embedding-3-small"),
                     _settings(openai_server, dimensions=1024)):
        with pytest.raises(UserError, match=r"gives (1536|1024)-d vectors but .*holds 3072-d"):
            run_search(SearchRequest(text=QUERIES[0], via_reports=True),
                       _options(archive), settings)
    assert len(openai_server.log) == before
    # a model whose length is not known up front is checked on the answer
    openai_server.inject(Fault.wrong_dimension())
    with pytest.raises(UserError, match=r"1536 dimensions, expected 3072"):
        run_search(SearchRequest(text=QUERIES[0], via_reports=True), _options(archive),
                   _settings(openai_server))


def test_rate_limits_and_server_errors_are_retried(archive, openai_server, key):
    openai_server.inject(Fault.http(429, retry_after="0"), Fault.http(502))
    start = len(openai_server.log)
    result = run_search(SearchRequest(text=QUERIES[0], k=2, via_reports=True),
                        _options(archive), _settings(openai_server))
    assert [e.status for e in openai_server.log[start:]] == [429, 502, 200]
    assert len(result.results) == 2


def test_missing_key_and_missing_table_are_one_line_exit_2(archive, monkeypatch, capsys,
                                                         tmp_path, key):
    rc = cli.main(["search", "--text", "x", "--via-reports", "--sink", archive["sink"],
                   "--sink-schema", archive["schema"], "--reports-table", "NoSuchReports"])
    err = capsys.readouterr().err
    assert rc == 2 and "no reports table" in err and "NoSuchReports" in err
    rc = cli.main(["search", "--image", archive["files"][0].path, "--via-reports",
                   "--sink", archive["sink"], "--sink-schema", archive["schema"]])
    assert rc == 2 and "use it with --text" in capsys.readouterr().err
    typo = tmp_path / "typo.db"
    rc = cli.main(["search", "--text", "x", "--via-reports", "--sink", f"sqlite:///{typo}"])
    assert rc == 2 and "no SQLite database" in capsys.readouterr().err
    assert not typo.exists()
    monkeypatch.delenv(API_KEY_ENV)
    absent = tmp_path / "absent.db"
    rc = cli.main(["search", "--text", "x", "--via-reports", "--sink", f"sqlite:///{absent}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{API_KEY_ENV} is not set" in err and "Traceback" not in err
    assert not absent.exists()  # said before anything was created


def test_postgres_table_with_quoted_mixed_case_names(archive, openai_server, key):
    """A tool that quoted its identifiers ("VectorSearch"."Reports"."StudyID") is read too."""
    if archive["kind"] != "postgresql":
        pytest.skip("quoted identifiers are a PostgreSQL matter (SQLite ignores case)")
    import psycopg
    rows = [(f"p{archive['subjects'][s]}", f"s{s}", _findings(s), _impression(s),
             "[" + ",".join(repr(float(x)) for x in v) + "]")
            for s, v in archive["vectors"].items()]
    with psycopg.connect(archive["sink"], autocommit=True) as conn:
        conn.execute('CREATE SCHEMA IF NOT EXISTS "VectorSearch"')
        conn.execute(f'CREATE TABLE "VectorSearch"."QuotedReports" ("SubjectID" VARCHAR(50), '
                     f'"StudyID" VARCHAR(50) PRIMARY KEY, "Findings" TEXT, "Impression" TEXT, '
                     f'"Vector" vector({DIM}))')
        conn.cursor().executemany('INSERT INTO "VectorSearch"."QuotedReports" VALUES '
                                  '(%s, %s, %s, %s, %s::vector)', rows)
        before = conn.execute('SELECT t::text FROM "VectorSearch"."QuotedReports" t '
                              'ORDER BY 1').fetchall()
    try:
        expected = _expected_images(archive, openai_server.vector(QUERIES[0]))
        result = run_search(SearchRequest(text=QUERIES[0], k=len(expected), via_reports=True,
                                          with_reports=True, reports_table="QuotedReports"),
                            _options(archive), _settings(openai_server))
        assert [r.hit.ImageID for r in result.results] == [i for i, _ in expected]
        assert result.via["reports_table"] == '"VectorSearch"."QuotedReports"'
        assert all(r.report.Findings == _findings(r.hit.StudyID) for r in result.results)
        with psycopg.connect(archive["sink"]) as conn:
            assert conn.execute('SELECT t::text FROM "VectorSearch"."QuotedReports" t '
                                'ORDER BY 1').fetchall() == before
    finally:
        with psycopg.connect(archive["sink"], autocommit=True) as conn:
            conn.execute('DROP TABLE "VectorSearch"."QuotedReports"')
