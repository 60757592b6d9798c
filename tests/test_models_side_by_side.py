"""Vectors of different models never mix (issue 20), on SQLite and PostgreSQL.

One archive, three "models": ``thumbnail`` (1024-d) and two test models of 512-d
(``projection-a`` / ``projection-b``, tests/providers_for_tests.py, rows keyed ``projection:a`` /
``projection:b``). No DDL is written by the test: each vector length gets its own tables
(``MIMICCXRImages`` for 1024-d, ``MIMICCXRImages512`` for 512-d), and inside a table every read
and write keys on the provider's ``store_key``: a re-run of model B after model A embeds every
image again for B and skips nothing of B; a search with B returns B's rows only; resume,
reprocess, ``--replace-invalid`` and accounting are those of any provider; ``check-db`` and
``search`` say which model and table; a ``--sink-table`` of the wrong length is one line, exit 2,
nothing created.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicomvec import defaults
from dicomvec.cli import main
from dicomvec.io.providers import ProviderConfig, create_provider
from dicomvec.io.providers.base import store_key_for
from dicomvec.io.stores import SinkConfig, VectorStore
from dicomvec.io.stores.schema_check import SchemaMismatchError
from dicomvec.pipeline.run import run_ingest
from dicomvec.synthetic import generate
from tests import providers_for_tests
from tests.local_run import thumbnail_flags

N = 6  # good images; the archive also holds one broken file

providers_for_tests.register()


def flags(tmp_path, sink, archive, provider, run_id, *extra):
    """A local run's flags with ``provider`` instead of thumbnail."""
    argv = thumbnail_flags(tmp_path, run_id, *extra, input=archive, sink=sink)
    argv[argv.index("--provider") + 1] = provider
    return argv


def tables(sink: str) -> set:
    """The tables in the sink (lower case), dicomvec's schema only on PostgreSQL."""
    if sink.startswith("sqlite:///"):
        import sqlite3
        with sqlite3.connect(sink[len("sqlite:///"):]) as conn:
            return {r[0].lower() for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")
                if not r[0].startswith("sqlite_")}
    import psycopg
    with psycopg.connect(sink) as conn:
        return {r[0].lower() for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "'vectorsearch'")}


def stored(sink: str, table: str, store_key: str):
    with VectorStore(sink, table=table) as store:
        ids = [r[0] for r in store.query(
            f"SELECT ImageID FROM {store.dialect.qualified_table} WHERE Provider = "
            f"{store.dialect.marker} ORDER BY ImageID", [store_key])]
        return store.vectors(ids, store_key)


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("dicomvec: error:")]


@pytest.fixture
def archive(tmp_path):
    files = generate(tmp_path / "archive", N, size=(128, 106), syntaxes=("native",), seed=5,
                     broken=1)
    good = [f for f in files if not f.broken]
    return str(tmp_path / "archive" / "files" / "**" / "*.dcm"), good


# -- the rule, in one place ----------------------------------------------------------------------

def test_default_tables_follow_the_vector_length():
    assert (defaults.images_table(1024), defaults.reports_table(1024)) == (
        "MIMICCXRImages", "MIMICCXRReports")
    assert (defaults.images_table(512), defaults.reports_table(512)) == (
        "MIMICCXRImages512", "MIMICCXRReports512")
    sink = SinkConfig.for_dimension(512, "sqlite:///x.db")
    assert (sink.table, sink.reports_table, sink.table_given) == (
        "MIMICCXRImages512", "MIMICCXRReports512", False)
    assert sink.images_spec.foreign_key == ("StudyID", "MIMICCXRReports512")
    named = SinkConfig.for_dimension(512, "sqlite:///x.db", table="Mine")
    assert (named.table, named.reports_table, named.table_given) == (
        "Mine", "MIMICCXRReports512", True)
    assert SinkConfig.for_dimension(1024).images_spec.foreign_key == (
        "StudyID", "MIMICCXRReports")


def test_store_keys_fit_the_provider_column_and_never_collide():
    a, b = (create_provider(ProviderConfig(name)) for name in providers_for_tests.NAMES)
    assert (a.name, a.store_key, b.store_key) == ("projection-a", "projection:a", "projection:b")
    assert create_provider(ProviderConfig("thumbnail")).store_key == "thumbnail"  # = name
    long_ids = ["hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224-v2",
                "/data/models/" + "x" * 300]
    keys = [store_key_for("openclip", model) for model in long_ids]
    assert all(len(k) <= defaults.PROVIDER_KEY_LENGTH and k.startswith("openclip:hf-hub:")
               or k.startswith("openclip:/data/") for k in keys)
    assert len(set(keys)) == 3 and keys == [store_key_for("openclip", m) for m in long_ids]


# -- side by side, for real ----------------------------------------------------------------------

@pytest.mark.slow  # several Beam jobs: the fast suite stays under two minutes
def test_models_side_by_side_never_mix(sink_url, tmp_path, archive, capsys):
    pattern, good = archive
    run = lambda provider, run_id, *extra: run_ingest(  # noqa: E731
        flags(tmp_path, sink_url, pattern, provider, run_id, *extra))

    thumb = run("thumbnail", "t1")
    assert (thumb.stored, thumb.rows_in_store, thumb.table) == (N, N, "MIMICCXRImages")
    first_a = run("projection-a", "a1")  # no init-db: its table is made for it
    assert (first_a.stored, first_a.skipped_existing, first_a.rows_in_store) == (N, 0, N)
    assert first_a.table == "MIMICCXRImages512" and first_a.exit_status == 0
    assert sum(first_a.dead_lettered.values()) == 1  # the broken file, accounted for
    assert {"mimiccxrimages", "mimiccxrimages512"} <= tables(sink_url)

    # model B after model A, same table: everything embedded again for B, nothing of B skipped
    first_b = run("projection-b", "b1")
    assert (first_b.stored, first_b.skipped_existing, first_b.rows_in_store) == (N, 0, N)
    again_b = run("projection-b", "b2")  # and B's own resume works
    assert (again_b.stored, again_b.skipped_existing) == (0, N)
    with VectorStore(sink_url, table="MIMICCXRImages512") as store:
        assert store.provider_counts() == {"projection:a": N, "projection:b": N}
    with VectorStore(sink_url) as store:
        assert store.provider_counts() == {"thumbnail": N}

    # each model's vector is its own: projection of the stored thumbnail descriptor
    thumbs = stored(sink_url, "MIMICCXRImages", "thumbnail")
    for name in providers_for_tests.NAMES:
        model = create_provider(ProviderConfig(name))
        vectors = stored(sink_url, "MIMICCXRImages512", model.store_key)
        assert sorted(vectors) == sorted(thumbs) and len(vectors) == N
        for image_id, vector in vectors.items():
            assert vector.shape == (512,)
            np.testing.assert_allclose(vector, model.project(thumbs[image_id]), atol=1e-5)
    a = stored(sink_url, "MIMICCXRImages512", "projection:a")
    b = stored(sink_url, "MIMICCXRImages512", "projection:b")
    assert all(abs(float(a[i] @ b[i])) < 0.5 for i in a)  # two models: unrelated vectors

    # search with B: B's rows only, and it says which model and table
    query = good[2].path
    base = ["search", "--image", query, "--sink", sink_url, "--k", str(2 * N)]
    assert main([*base, "--provider", "projection-b", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert (payload["provider"], payload["store_key"], payload["table"]) == (
        "projection-b", "projection:b", "MIMICCXRImages512")
    hits = payload["results"]
    assert len(hits) == N and {h["Provider"] for h in hits} == {"projection:b"}
    assert hits[0]["score"] > 0.999 and Path(hits[0]["ImagePath"]).name == Path(query).name
    assert main([*base, "--provider", "projection-a"]) == 0
    out = capsys.readouterr().out
    assert "model: test-projection-512-a (projection:a), table " in out
    assert out.split("model: ", 1)[1].split("\n", 1)[0].endswith("MIMICCXRImages512")
    assert main([*base, "--provider", "thumbnail"]) == 0
    assert "(thumbnail), table " in capsys.readouterr().out

    # check-db names the model and the table, and counts the model's rows
    assert main(["check-db", "--sink", sink_url, "--provider", "projection-a"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: test-projection-512-a (projection:a), table ")
    assert out.splitlines()[0].endswith("MIMICCXRImages512")
    assert f"; {N} of this model (projection:a)" in out and "512-d vectors" in out
    assert main(["check-db", "--sink", sink_url]) == 0  # 1024-d: the thumbnail table
    assert "model: any (1024-d vectors), table " in capsys.readouterr().out

    # a --sink-table of the wrong length: one line, exit 2, nothing created or written
    before = (tables(sink_url), stored(sink_url, "MIMICCXRImages", "thumbnail"))
    argv = flags(tmp_path, sink_url, pattern, "projection-a", "wrong", "--sink-table",
                 "MIMICCXRImages")
    assert main(["run", *argv]) == 2
    (err,) = error_lines(capsys)
    assert "Vector is 1024-d, we write 512-d" in err and "leave --sink-table" in err
    assert "MIMICCXRImages512" in err
    assert not (tmp_path / "dl" / "wrong").exists()
    after = (tables(sink_url), stored(sink_url, "MIMICCXRImages", "thumbnail"))
    assert after[0] == before[0] and after[1].keys() == before[1].keys()
    with pytest.raises(SchemaMismatchError):
        SinkConfig.for_dimension(512, sink_url, table="MIMICCXRImages").images().init_schema(512)


@pytest.mark.slow  # Beam jobs with worker processes
def test_resume_reprocess_replace_invalid_and_workers_for_a_512_d_model(sink_url, tmp_path,
                                                                     archive, capsys):
    pattern, _ = archive

    def argv(provider, run_id, *extra):
        return flags(tmp_path, sink_url, pattern, provider, run_id, *extra)

    # two worker processes build the registered test provider (ProviderConfig.target)
    workers = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    first = run_ingest(argv("projection-a", "a1", *workers))
    assert (first.stored, first.rows_in_store, first.exit_status) == (N, N, 0)
    assert sum(first.dead_lettered.values()) == 1 and first.accounting.holds
    run_ingest(argv("projection-b", "b1"))

    # reprocess: the broken file again, through model A's table, counts that add up
    assert main(["reprocess", *argv("projection-a", "a2")]) == 0
    out = capsys.readouterr().out
    assert "images stored        0" in out and "table MIMICCXRImages512" in out

    # --replace-invalid: only A's broken row is re-embedded; B's broken row is B's business
    sink = SinkConfig.for_dimension(512, sink_url)
    with sink.images() as store:
        ids = sorted(stored(sink_url, "MIMICCXRImages512", "projection:a"))
        d = store.dialect
        for image_id, key in ((ids[1], "projection:a"), (ids[2], "projection:b")):
            store.with_retry(lambda conn, i=image_id, k=key: (conn.cursor().execute(
                f"UPDATE {d.qualified_table} SET Vector = {d.vector_param(512)} WHERE ImageID = "
                f"{d.marker} AND Provider = {d.marker}",
                [d.encode_vector(np.zeros(512, dtype=np.float32)), i, k]), conn.commit()),
                "break a row")
        assert sorted(store.invalid_rows(512)) == sorted(
            [(ids[1], "projection:a"), (ids[2], "projection:b")])
    resumed = run_ingest(argv("projection-a", "a3"))
    assert (resumed.stored, resumed.skipped_existing) == (0, N)
    repaired = run_ingest(argv("projection-a", "a4", "--replace-invalid"))
    assert (repaired.stored, repaired.skipped_existing, repaired.rows_in_store) == (1, N - 1, N)
    with sink.images() as store:
        assert store.invalid_rows(512) == [(ids[2], "projection:b")]


def test_sqlite_side_index_folders_are_one_per_store_key(tmp_path):
    """SQLite's IVF index files live in a folder per (table, store_key): keys that differ only
    in characters a file name cannot hold still get folders of their own."""
    from dicomvec.io.stores.sqlite_index import IvfIndex
    db = str(tmp_path / "db.sqlite")
    folders = {IvfIndex(db, "MIMICCXRImages512", key).dir
               for key in ("openclip:a/b", "openclip:a_b", "openclip_a_b", "openclip:a:b")}
    assert len(folders) == 4
    assert IvfIndex(db, "MIMICCXRImages", "thumbnail").dir.endswith(
        "db.sqlite.vectors/MIMICCXRImages.thumbnail")  # today's folders keep their names


def test_a_store_key_longer_than_the_provider_column_is_refused_before_the_job():
    from dicomvec.errors import PreflightError
    from dicomvec.io.providers.registry import register_provider
    from dicomvec.pipeline.preflight import check_provider
    register_provider("too-long", f"{__name__}:TooLongKey")
    with pytest.raises(PreflightError, match="must be 1 to 50 characters"):
        check_provider(ProviderConfig("too-long"))
    check_provider(ProviderConfig("projection-a"))  # fits


class TooLongKey(providers_for_tests.ProjectionProvider):
    @property
    def store_key(self) -> str:
        return "openclip:" + "x" * 60
