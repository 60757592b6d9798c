"""Beam's --setup_file builds an sdist of the project: it must contain the whole package."""
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_setup_file_builds_an_sdist_with_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    (archive,) = tmp_path.glob("dicomvec-*.tar.gz")
    names = tarfile.open(archive).getnames()
    for module in ("dicomvec/pipeline/graph.py", "dicomvec/transforms/embed.py",
                   "dicomvec/io/stores/base.py", "dicomvec/imaging/__init__.py",
                   "dicomvec/cli.py"):
        assert any(name.endswith(module) for name in names), module


def test_cli_entry_point_lists_run():
    out = subprocess.run([sys.executable, "-m", "dicomvec.cli", "--help"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    assert "run" in out
