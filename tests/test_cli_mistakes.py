"""A user's mistakes on the command line: each is one line on stderr, exit status 2, and nothing
is created (no database file, no table, no dead-letter or beam-temp folder). Also: Beam's
options still pass through, a directory as --input means every file below it, --help lists
every option without importing Beam, and "nothing to reprocess" is a normal outcome."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dicomvec import cli
from dicomvec.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """Three small synthetic DICOMs (and one broken file) under ``<root>/files``."""
    root = tmp_path_factory.mktemp("sample")
    generate(root, 3, size=(128, 128), syntaxes=("native",), broken=1, seed=3)
    return root / "files"


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder (the defaults' out/ would land here) as the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    return tmp_path


def snapshot(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_line_error(capfd, argv, folder: Path, code: int = 2) -> str:
    """Run the CLI; assert the exit code, nothing on stdout, exactly one line on stderr and no
    new file under ``folder``. Returns that line."""
    before = snapshot(folder)
    try:
        rc = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own errors exit from the parser
        rc = exit_.code
    out, err = capfd.readouterr()
    assert rc == code, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dicomvec"), err
    assert snapshot(folder) == before, "the mistake created files"
    return lines[0]


def unwritable_dir(tmp: Path) -> Path:
    """A folder nobody can write into: a read-only folder, or /proc for root (root ignores
    permission bits)."""
    if os.geteuid() == 0:
        return Path("/proc")
    ro = tmp / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def run_argv(sample: Path, *extra: str):
    return ["run", "--input", f"{sample}/**/*.dcm", "--provider", "thumbnail", *extra]


# --------------------------------------------------------------------------- typos


def test_misspelled_dicomvec_option_is_an_error_with_a_suggestion(sample, work, capfd):
    line = one_line_error(capfd, run_argv(sample, "--sinks", f"sqlite:///{work}/x.db"), work)
    assert "unknown option --sinks" in line and "did you mean --sink?" in line


def test_misspelled_beam_option_is_an_error_with_a_suggestion(sample, work, capfd):
    line = one_line_error(capfd, run_argv(sample, "--direct-num-workers", "2"), work)
    assert "did you mean --direct_num_workers?" in line
    line = one_line_error(capfd, run_argv(sample, "--runer", "DirectRunner"), work)
    assert "unknown option --runer" in line and "did you mean --runner?" in line


def test_misspelled_runner_gets_a_suggestion(sample, work, capfd):
    line = one_line_error(capfd, run_argv(sample, "--runner", "FlinkRuner"), work)
    assert "unknown --runner FlinkRuner (did you mean FlinkRunner?)" in line


def test_both_spellings_of_dicomvec_options_are_accepted():
    from dicomvec.commands.pipeline_flags import check_flags
    check_flags(["--dead-letter", "x", "--dead_letter", "y", "--image-size", "3",
                 "--runner", "DirectRunner", "--direct_num_workers", "2", "--streaming"],
                "dicomvec run")


def test_bad_option_value_is_one_line(sample, work, capfd):
    line = one_line_error(capfd, run_argv(sample, "--image-size", "abc"), work)
    assert "invalid int value: 'abc'" in line


def test_stray_argument_and_typo_in_other_commands(work, capfd):
    line = one_line_error(capfd, ["synth", "--out", "x", "--cuont", "3"], work)
    assert "did you mean --count?" in line
    one_line_error(capfd, ["synth"], work)  # --out is required
    line = one_line_error(capfd, ["search", "--image", "q.dcm", "--sinkk", "sqlite:///x.db"],
                          work)
    assert "did you mean --sink?" in line


@pytest.mark.parametrize("argv, near", [
    (["init-db", "--sink", "sqlite:///x.db", "--tabel", "T"], "--table"),
    (["check-db", "--sink", "sqlite:///x.db", "--tabel", "T"], "--table"),
    (["search", "--sink", "sqlite:///x.db", "--tex", "effusion"], "--text"),
    (["serve", "--sink", "sqlite:///x.db", "--prot", "9"], "--port"),
])
def test_a_typo_of_a_commands_own_flag_is_suggested(work, capfd, argv, near):
    """The store, search and serve commands hand their leftover flags to the strict check: a
    misspelling of the command's own flag is suggested too, and nothing is created."""
    line = one_line_error(capfd, argv, work)
    assert f"unknown option {argv[-2]} (did you mean {near}?)" in line


def test_options_registered_later_are_accepted_and_suggested():
    """Validity comes from Beam's registry of PipelineOptions subclasses at parse time: an
    option class defined after import (as S3 or a plugin adds) is known without a list."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from dicomvec.commands.pipeline_flags import check_flags, group_of
    from dicomvec.errors import UsageError

    class LaterOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument("--later_endpoint_url", default=None)

    check_flags(["--later_endpoint_url", "http://127.0.0.1:9"], "dicomvec run")
    with pytest.raises(UsageError, match="did you mean --later_endpoint_url"):
        check_flags(["--later_endpont_url", "x"], "dicomvec run")
    assert group_of("replace_invalid", "drop rows ...") == "sink"
    assert group_of("reports_table", None) == "sink"
    assert group_of("text_model", None) == "provider"
    assert group_of("watch_interval", "streaming: seconds") == "streaming"


# --------------------------------------------------------------------------- preflight


def test_sink_in_a_missing_folder_that_cannot_be_made(sample, work, capfd):
    ro = unwritable_dir(work)
    line = one_line_error(capfd, run_argv(sample, "--sink", f"sqlite:///{ro}/a/b/x.db",
                                          "--dead-letter", str(work / "dl")), work)
    assert "cannot create the sink" in line and "not writable" in line
    assert not (ro / "a").exists()


def test_sink_in_a_read_only_place(sample, work, capfd):
    ro = unwritable_dir(work)
    line = one_line_error(capfd, run_argv(sample, "--sink", f"sqlite:///{ro}/x.db",
                                          "--dead-letter", str(work / "dl")), work)
    assert "not writable" in line
    assert not (ro / "x.db").exists()


def test_sink_below_a_file(sample, work, capfd):
    (work / "afile").write_text("")
    line = one_line_error(capfd, run_argv(sample, "--sink", f"sqlite:///{work}/afile/x.db",
                                          "--dead-letter", str(work / "dl")), work)
    assert "afile' is a file, not a folder" in line
    line = one_line_error(capfd, run_argv(sample, "--sink", f"sqlite:///{work}/afile/d/x.db",
                                          "--dead-letter", str(work / "dl")), work)
    assert "afile' is a file, not a folder" in line


def test_unwritable_dead_letter_folder(sample, work, capfd):
    ro = unwritable_dir(work)
    line = one_line_error(capfd, run_argv(sample, "--sink", f"sqlite:///{work}/x.db",
                                          "--dead-letter", str(ro / "dead")), work)
    assert "--dead-letter" in line and "not writable" in line
    line = one_line_error(capfd, run_argv(sample, "--sink", f"sqlite:///{work}/x.db",
                                          "--dead-letter", str(ro / "a" / "dead")), work)
    assert "cannot create --dead-letter" in line
    (work / "dl-file").write_text("")
    line = one_line_error(capfd, run_argv(sample, "--sink", f"sqlite:///{work}/x.db",
                                          "--dead-letter", str(work / "dl-file")), work)
    assert "is a file, not a folder" in line


def test_input_matching_nothing(work, capfd):
    line = one_line_error(capfd, ["run", "--input", str(work / "none" / "*.dcm")], work)
    assert "no files match --input" in line


def test_nvclip_without_key_creates_no_table_and_no_folder(sample, work, capfd):
    db = work / "existing.db"
    sqlite3.connect(db).close()
    line = one_line_error(capfd, run_argv(sample, "--provider", "nvclip", "--sink",
                                          f"sqlite:///{db}", "--dead-letter",
                                          str(work / "dl")), work)
    assert "NVIDIA_API_KEY is not set" in line
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_server_login_failure(sample, work, capfd):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = one_line_error(capfd, run_argv(
        sample, "--sink", f"postgresql://nobody@127.0.0.1:{port}/db",
        "--dead-letter", str(work / "dl")), work)
    assert "cannot log in to postgresql://nobody@127.0.0.1" in line


def test_unknown_provider(sample, work, capfd):
    line = one_line_error(capfd, run_argv(sample, "--provider", "nope"), work)
    assert "unknown provider 'nope'" in line


def test_search_on_a_missing_database_creates_no_file(sample, work, capfd):
    query = next(sample.rglob("*.dcm"))
    line = one_line_error(capfd, ["search", "--image", str(query), "--sink",
                                  f"sqlite:///{work}/missing.db", "--provider", "thumbnail"],
                          work)
    assert "no database at" in line


def test_dead_letter_commands_on_a_missing_folder(work, capfd):
    line = one_line_error(capfd, ["dead-letters", "summary", str(work / "nope")], work)
    assert "does not exist" in line
    line = one_line_error(capfd, ["reprocess", "--dead-letter", str(work / "nope"),
                                  "--sink", f"sqlite:///{work}/x.db"], work)
    assert "does not exist" in line


def test_dead_letters_without_an_action_lists_its_actions(work, capfd):
    line = one_line_error(capfd, ["dead-letters"], work)
    assert "needs an action: summary (counts by generation" in line


def test_one_generation_is_singular(tmp_path):
    from dicomvec.commands.dead_letters import summary_table
    rows = [{"run_id": "a", "stage": "decode", "error_type": "X", "path": "/p"}]
    assert "total over 1 generation: rows: 1" in summary_table(rows)


def _without_permission_override(argv):
    """``argv`` as a command that obeys file permissions: root (this container) ignores them,
    so root runs it with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped (setpriv)."""
    if os.geteuid() != 0:
        return list(argv)
    import shutil
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder root cannot write")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]


def test_writable_sqlite_file_in_a_folder_that_is_not(sample, work):
    """SQLite writes its journal beside the file: preflight must refuse, and `search` must not
    send the user to `dicomvec run`."""
    folder = work / "locked"
    folder.mkdir()
    with sqlite3.connect(folder / "x.db") as conn:  # a store made earlier, writable itself
        conn.execute("CREATE TABLE t (a)")
    conn.close()
    folder.chmod(0o555)
    try:
        before = snapshot(work)
        for argv, where in (
                (run_argv(sample, "--sink", f"sqlite:///{folder}/x.db"), "run"),
                (["search", "--image", str(next(sample.rglob("*.dcm"))), "--sink",
                  f"sqlite:///{folder}/x.db", "--provider", "thumbnail"], "search")):
            proc = subprocess.run(_without_permission_override(
                [sys.executable, "-m", "dicomvec.cli", *argv]), capture_output=True,
                text=True, cwd=work, timeout=120)
            assert proc.returncode == 2, (where, proc.stderr)
            assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, (where, proc.stderr)
            assert "folder" in proc.stderr and "is not writable" in proc.stderr, proc.stderr
            assert "journal" in proc.stderr and "first?" not in proc.stderr, proc.stderr
            assert snapshot(work) == before, where
    finally:
        folder.chmod(0o755)


def test_search_store_error_hints_at_run_only_for_a_missing_table():
    from dicomvec.errors import UserError
    from dicomvec.search.engine import _store_errors

    def said(exc):
        with pytest.raises(UserError) as caught:
            with _store_errors("MIMICCXRImages", "sqlite:///x.db"):
                raise exc
        return str(caught.value)

    assert "first?" not in said(sqlite3.OperationalError("attempt to write a readonly database"))
    assert "run `dicomvec run` first?" in said(
        sqlite3.OperationalError("no such table: MIMICCXRImages"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_job_endpoint_that_does_not_answer(sample, work, capfd, monkeypatch):
    """A wrong --job_endpoint: one line naming the address, within seconds, nothing created
    (it used to hang silently for minutes with the sink's .db file already made)."""
    from dicomvec.pipeline import preflight
    monkeypatch.setattr(preflight, "JOB_ENDPOINT_TIMEOUT_S", 1.0)
    closed = f"127.0.0.1:{_free_port()}"
    with socket.socket() as silent:  # accepts connections, never speaks gRPC
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = f"127.0.0.1:{silent.getsockname()[1]}"
        for endpoint in (closed, mute):
            line = one_line_error(capfd, run_argv(
                sample, "--sink", f"sqlite:///{work}/x.db", "--dead-letter", str(work / "dl"),
                "--runner", "PortableRunner", "--job_endpoint", endpoint), work)
            assert f"no Beam job service answers at --job_endpoint {endpoint}" in line


def test_job_endpoint_that_answers_passes_preflight():
    import grpc
    from concurrent import futures

    from apache_beam.options.pipeline_options import PipelineOptions

    from dicomvec.pipeline.preflight import check_job_endpoint
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        check_job_endpoint(PipelineOptions(["--job_endpoint", f"127.0.0.1:{port}"]), 5.0)
    finally:
        server.stop(None)


# --------------------------------------------------------------------------- what works


def test_directory_input_means_every_file_below_and_beam_options_pass(sample, work, capfd):
    """Also: missing folders for the sink and the dead letters are made by the job."""
    rc = cli.main(["run", "--input", str(sample), "--sink", f"sqlite:///{work}/new/x.db",
                   "--dead-letter", str(work / "new2" / "dl"), "--provider", "thumbnail",
                   "--runner", "DirectRunner", "--direct_num_workers", "1", "--run-id", "d"])
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert f"is a directory: reading every file below it (pattern {sample}/**)" in err
    assert "files matched        4" in out and "images stored        3" in out
    # nothing to reprocess at stage embed: a normal outcome, exit 0
    rc = cli.main(["reprocess", "--dead-letter", str(work / "new2" / "dl"), "--stage", "embed",
                   "--sink", f"sqlite:///{work}/new/x.db"])
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert out.startswith("nothing to reprocess: no dead letters")


def test_no_help_imports_beam_numpy_or_pydicom():
    """Every command's --help (and the top one) answers without the heavy libraries."""
    code = ("import sys, io, contextlib\nfrom dicomvec import cli\n"
            "names = [n for n in cli.build_parser()._subparsers._group_actions[0].choices]\n"
            "for argv in [['--help']] + [[n, '--help'] for n in names]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: cli.main(argv)\n        except SystemExit: pass\n"
            "print(len(names), [m for m in ('apache_beam', 'numpy', 'pydicom', 'PIL', 'pyarrow')"
            " if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, heavy = proc.stdout.split(" ", 1)
    assert int(count) >= 9 and heavy.strip() == "[]", proc.stdout


def test_help_lists_every_option_with_defaults_without_importing_beam():
    """`--help` of every pipeline command: each dicomvec flag, its default, the groups and
    where Beam's options are documented, with no Beam, numpy or pydicom imported."""
    from dicomvec.pipeline.options import DicomvecFlags
    names = []

    class Collect:
        def add_argument(self, *flags, **kwargs):
            names.append((flags[0], kwargs.get("default")))

    DicomvecFlags._add_argparse_args(Collect())
    code = ("import sys, io, contextlib\nfrom dicomvec.cli import main\n"
            "buf = io.StringIO()\nwith contextlib.redirect_stdout(buf):\n"
            "    try: main([sys.argv[1], '--help'])\n    except SystemExit: pass\n"
            "heavy = [m for m in ('apache_beam', 'numpy', 'pydicom') if m in sys.modules]\n"
            "print(buf.getvalue()); print('HEAVY', heavy)")
    for command in ("run", "reprocess", "reports", "search"):  # the pipeline commands
        proc = subprocess.run([sys.executable, "-c", code, command], capture_output=True,
                              text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
        assert text.rstrip().endswith("HEAVY []"), text[-300:]
        flat = " ".join(text.split())
        for flag, default in names:
            assert flag in text, (command, flag)
        assert "(default: sqlite:///out/dicomvec.db)" in flat and "(default: 224)" in flat
        for title in ("input and preprocessing", "sink:", "embedding provider", "streaming"):
            assert title in text, (command, title)
        if command != "search":
            assert "apache_beam.options.pipeline_options.html" in flat and "--help-beam" in flat


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_worker_processes_print_each_warning_once_and_no_beam_chatter(sample, work):
    """Two worker processes: Beam's harness chatter (apitools, semi_persistent_directory, the
    job service's relay) stays off by default, and each dicomvec warning is printed once;
    -v brings Beam's warnings back."""
    broken = next(p for p in sample.rglob("*.dcm") if "truncated" in _kind(sample, p))

    def stderr_of(*extra):
        proc = subprocess.run(
            [sys.executable, "-m", "dicomvec.cli", *extra, "run", "--input", str(sample),
             "--sink", f"sqlite:///{work}/w{len(extra)}.db", "--dead-letter",
             str(work / f"dl{len(extra)}"), "--provider", "thumbnail",
             "--direct_num_workers", "2"],
            capture_output=True, text=True, cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    quiet = stderr_of()
    for noise in ("apitools", "semi_persistent_directory", "sdk_worker", "Worker: severity",
                  "Logging handler created"):
        assert noise not in quiet, quiet
    assert sum(str(broken) in line for line in quiet.splitlines()) == 1, quiet
    verbose = stderr_of("-v")
    assert "semi_persistent_directory" in verbose
    assert sum(str(broken) in line for line in verbose.splitlines()) == 1, verbose


def _kind(sample: Path, path: Path) -> str:
    manifest = (sample.parent / "synthetic-manifest.csv").read_text().splitlines()
    for line in manifest[1:]:
        fields = line.split(",")
        if fields[0] == str(path):
            return fields[-1]
    return ""


def test_reprocess_reason_is_cut_at_a_word_boundary():
    from dicomvec.pipeline.reprocess import short_reason
    message = "pixel data truncated: 5182976 bytes, the first frame needs 15548928 " * 3
    text = short_reason("PixelDecodeError", message, width=100)
    assert len(text) <= 100 and text.endswith(" …")
    assert (text[:-2] + " ").startswith("PixelDecodeError: pixel data truncated:")
    assert (f"PixelDecodeError: {message}").startswith(text[:-2] + " ")  # whole words only
