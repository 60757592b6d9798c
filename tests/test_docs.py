"""Docs that run: every shell example of README.md and docs/*.md (see tests/docs_examples.py
for what counts as an example and how outputs are compared) runs against the workspace that
``./run_local.sh`` makes, except the examples whose fence says ``needs=…`` (a server, a key),
which are skipped by name."""
from __future__ import annotations

import pytest

from tests import docs_examples

pytestmark = pytest.mark.slow

ALL = [example for path in docs_examples.doc_files() for example in docs_examples.examples(path)]


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    return docs_examples.make_local_run(tmp_path_factory.mktemp("run_local"))


@pytest.fixture(scope="session")
def workspaces(local_run, tmp_path_factory):
    """One copy of the run_local.sh workspace per document (its examples run in order)."""
    made = {}

    def for_doc(path):
        if path not in made:
            made[path] = docs_examples.copy_workspace(
                local_run, tmp_path_factory.mktemp(path.stem))
        return made[path]
    return for_doc


def test_there_are_runnable_examples():
    runnable = [e for e in ALL if not e.needs]
    assert len(runnable) >= 6 and any(e.kind == "console" for e in runnable)
    for example in ALL:  # a marker must say what is needed
        assert example.needs is None or example.needs.strip(), example.name


@pytest.mark.parametrize("example", ALL, ids=[e.name for e in ALL])
def test_example_runs(example, workspaces):
    if example.needs:
        pytest.skip(f"needs {example.needs} (marked in the fence)")
    docs_examples.run_example(example, workspaces(example.path))
