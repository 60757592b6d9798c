"""``--provider openclip`` mistakes: one line on stderr naming the model and how to pass a local
path, exit status 2, nothing created — an uncached hub name with no network, a missing path,
corrupt weights, a table of another dimension, --device cuda without CUDA, no --openclip-model.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.openclip_models import tiny_models  # noqa: F401 (a fixture)
from tests.test_cli_mistakes import one_line_error, sample, snapshot, work  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


def run_flags(sample, root: Path, model: str, *extra: str):  # noqa: F811
    return ["run", "--input", str(sample / "**" / "*.dcm"),
            "--sink", f"sqlite:///{root}/out/db.sqlite",
            "--dead-letter", str(root / "out" / "dl"), "--provider", "openclip",
            "--openclip-model", model, *extra]


def test_a_missing_path(capfd, sample, work):  # noqa: F811
    line = one_line_error(capfd, run_flags(sample, work, str(work / "no-such-model")), work)
    assert "no-such-model" in line and "no such file or folder" in line
    assert "--openclip-model /path/to/folder" in line


def test_no_model_given(capfd, sample, work):  # noqa: F811
    argv = ["run", "--input", str(sample / "**" / "*.dcm"), "--provider", "openclip"]
    line = one_line_error(capfd, argv, work)
    assert "--openclip-model" in line


def test_a_folder_without_weights(capfd, sample, work, tiny_models):  # noqa: F811
    folder = work / "half"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes(
        (tiny_models["folder"] / "open_clip_config.json").read_bytes())
    line = one_line_error(capfd, run_flags(sample, work, str(folder)), work)
    assert "has no weights" in line


@pytest.mark.parametrize("kind", ["folder", "openai"])
def test_corrupt_weights(capfd, sample, work, tiny_models, kind):  # noqa: F811
    if kind == "folder":
        model = work / "corrupt"
        model.mkdir()
        (model / "open_clip_config.json").write_bytes(
            (tiny_models["folder"] / "open_clip_config.json").read_bytes())
        good = (tiny_models["folder"] / "open_clip_pytorch_model.bin").read_bytes()
        (model / "open_clip_pytorch_model.bin").write_bytes(good[:len(good) // 2])
    else:
        model = work / "chexzero.pt"
        model.write_bytes(b"these are not weights" * 100)
    line = one_line_error(capfd, run_flags(sample, work, str(model)), work)
    assert str(model) in line and ("cannot load the model" in line
                                   or "cannot read the weights" in line), line


def test_a_table_of_another_dimension(capfd, sample, work, tiny_models):  # noqa: F811
    from dicomvec import cli
    db = work / "out" / "db.sqlite"
    assert cli.main(["init-db", "--sink", f"sqlite:///{db}", "--dimension", "1024"]) == 0
    capfd.readouterr()
    # left to itself the 512-d model writes to its own table; named, a 1024-d table is refused
    line = one_line_error(capfd, run_flags(sample, work, str(tiny_models["folder"]),
                                           "--sink-table", "MIMICCXRImages"), work)
    assert "1024" in line and "512" in line, line


def test_cuda_asked_for_without_cuda(capfd, sample, work, tiny_models):  # noqa: F811
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the test machines have none
    line = one_line_error(capfd, run_flags(sample, work, str(tiny_models["folder"]),
                                           "--device", "cuda"), work)
    assert "--device cuda" in line


def test_search_with_a_missing_model(capfd, work):  # noqa: F811
    db = work / "db.sqlite"
    line = one_line_error(capfd, ["search", "--text", "pleural effusion", "--sink",
                                  f"sqlite:///{db}", "--provider", "openclip",
                                  "--openclip-model", str(work / "gone")], work)
    assert "gone" in line


@pytest.mark.slow  # a fresh interpreter (HF_HUB_OFFLINE is read when huggingface_hub loads)
def test_an_uncached_hub_name_with_no_network(sample, tmp_path):  # noqa: F811
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-cache"),
               PYTHONPATH=str(REPO))
    env.pop("HF_HUB_CACHE", None)
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dicomvec.cli",
                           *run_flags(sample, tmp_path, HUB)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert HUB in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert "--openclip-model /path/to/folder" in lines[0]
    assert proc.stdout == "" and snapshot(tmp_path) == before


@pytest.mark.slow  # a fresh interpreter, offline
def test_a_biomedclip_folder_without_its_text_towers_config(sample, tmp_path, tiny_models):
    """As BiomedCLIP is published: tokenizer files but no HF config.json for its PubMedBERT
    tower; offline with an empty cache that is one line saying what to copy where."""
    import shutil
    folder = tmp_path / "biomed"
    shutil.copytree(tiny_models["biomedclip"], folder)
    (folder / "config.json").unlink()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-cache"),
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "dicomvec.cli",
                           *run_flags(sample, tmp_path, str(folder))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BiomedBERT-base-uncased-abstract/config.json" in lines[0], \
        proc.stderr
    assert not (tmp_path / "out").exists()
