"""Where the archive's pixels go, said plainly: each provider's ``destination``, the one notice
printed before a command sends data to a hosted third-party API (and only then, only once, only
after every check has passed), and the ``--help`` text that names the three routes."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dicomvec import cli
from dicomvec.defaults import NVCLIP_URL
from dicomvec.io.providers import ProviderConfig, create_provider
from dicomvec.io.providers.privacy import third_party_notice
from tests.test_cli_mistakes import one_line_error, sample, work  # noqa: F401 (fixtures)


def nvclip(url: str):
    return create_provider(ProviderConfig("nvclip", {"url": url}))


@pytest.fixture
def hosted_work(work, nvclip_api_key) -> Path:
    """``work`` (an empty current folder) with a test API key in the environment, so that the
    hosted API's preflight passes."""
    return work


def test_each_provider_says_where_pixels_go():
    thumbnail = create_provider(ProviderConfig("thumbnail"))
    assert thumbnail.destination.startswith("nowhere") and not thumbnail.third_party
    hosted = nvclip(NVCLIP_URL)
    assert hosted.third_party
    assert hosted.destination == ("NVIDIA hosted API (integrate.api.nvidia.com), a "
                                  "third-party service")
    nim = nvclip("http://nim.hospital.internal:8000/v1")
    assert not nim.third_party
    assert nim.destination == "self-hosted NIM at nim.hospital.internal:8000"
    assert nvclip("https://nim.example.org/v1").destination.endswith("nim.example.org:443")


def test_the_notice_names_the_dua_and_both_local_routes():
    notice = third_party_notice(nvclip(NVCLIP_URL), "image pixels")
    assert notice.startswith("notice: image pixels will be sent to the NVIDIA hosted API")
    assert "PhysioNet" in notice and "data use agreement" in notice
    assert "--provider openclip --openclip-model" in notice and "--nvclip-url" in notice
    assert "docs/privacy.md" in notice and "\n" not in notice
    # nothing to say for the user's own NIM, a local descriptor, or a text query
    assert third_party_notice(nvclip("http://127.0.0.1:8000/v1"), "image pixels") == ""
    assert third_party_notice(create_provider(ProviderConfig("thumbnail")), "image pixels") == ""
    assert third_party_notice(nvclip(NVCLIP_URL), "") == ""


def _run_argv(sample: Path, work: Path, *extra: str):
    return ["run", "--input", str(sample / "**"), "--sink", f"sqlite:///{work}/out/db.sqlite",
            "--dead-letter", str(work / "out" / "dl"), "--provider", "nvclip", *extra]


def test_hosted_api_run_prints_one_notice_before_it_starts(sample, hosted_work, capfd,
                                                             monkeypatch):
    """All checks pass, the notice is printed once on stderr, then the job would start: the
    job itself is replaced by a marker so that nothing is sent anywhere."""
    from dicomvec.pipeline import run as run_module

    class Started(Exception):
        pass

    def job_started(*args, **kwargs):
        raise Started()

    monkeypatch.setattr(run_module, "run_job", job_started)
    with pytest.raises(Started):
        cli.main(_run_argv(sample, hosted_work))
    out, err = capfd.readouterr()
    notices = [line for line in err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1, err
    assert "image pixels will be sent to the NVIDIA hosted API" in notices[0]


def test_self_hosted_nim_run_prints_no_notice(sample, work, capfd, monkeypatch):
    from dicomvec.pipeline import run as run_module

    class Started(Exception):
        pass

    monkeypatch.setattr(run_module, "run_job", lambda *a, **k: (_ for _ in ()).throw(Started()))
    with pytest.raises(Started):
        cli.main(_run_argv(sample, work, "--nvclip-url", "http://127.0.0.1:9/v1"))
    assert "notice:" not in capfd.readouterr().err


def test_a_mistake_is_still_one_line_without_the_notice(sample, hosted_work, capfd):
    """The notice comes after every check: a user's mistake stays one line, exit 2."""
    (hosted_work / "blocker").write_text("a file where a folder should be")
    line = one_line_error(capfd, _run_argv(sample, hosted_work, "--dead-letter",
                                           str(hosted_work / "blocker" / "dl")), hosted_work)
    assert "notice" not in line


def test_image_search_on_the_hosted_api_prints_the_notice_first(hosted_work, capfd):
    """``search --image`` sends the query image: the notice comes first; here the query file is
    not DICOM, so the search stops (one line, exit 2) before anything is sent."""
    db = hosted_work / "db.sqlite"
    sqlite3.connect(db).close()
    query = hosted_work / "query.dcm"
    query.write_text("not a DICOM file")
    rc = cli.main(["search", "--image", str(query), "--sink", f"sqlite:///{db}",
                   "--provider", "nvclip"])
    lines = capfd.readouterr().err.splitlines()
    assert rc == 2, lines
    assert lines[0].startswith("notice: the query image's pixels will be sent"), lines
    assert len(lines) == 2 and lines[1].startswith("dicomvec"), lines


def test_help_names_where_pixels_go(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Where the pixels go" in text
    assert "NVIDIA's hosted API, a third-party service" in text
    assert "docs/privacy.md" in text
