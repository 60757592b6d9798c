"""The shell examples of README.md and docs/*.md, as data: extract them, run them, and (with
``--write``) put the real output of the current commit back into the docs.

Which fences are examples: those whose info string starts with ``bash``, ``sh``, ``shell`` or
``console``. The rest (``text``, diagrams, formulas, Dockerfiles) are not run.

* An example that needs something the test machine lacks says so in its info string:
  ```` ```bash needs=iris ```` — ``needs=`` followed by what it needs (``iris``, ``nvclip-key``,
  ``docker``, ``flink``, ...). The docs test skips it and says why; nothing else is skipped.
* ``bash`` / ``sh`` / ``shell``: the block runs as one script (``set -euo pipefail``); it must
  exit 0.
* ``console``: lines starting with ``$ `` are commands (``\\`` continues a line), the lines
  after each command are its output. The commands run in order in one shell; the output
  (stdout and stderr, without time-stamped log lines) must equal what the doc shows once run
  ids, timestamps, durations and rates are masked.

Everything runs in a working folder holding ``out/`` exactly as ``./run_local.sh`` left it
(``out/sample``, ``out/dicomvec.db``, ``out/dead_letter``), with the project's venv first on
PATH (the one running the test). Each document gets its own copy, its examples run top to
bottom.

    python -m tests.docs_examples --write [FILE.md ...]   # regenerate the shown outputs
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SHELLS = ("bash", "sh", "shell", "console")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
END_MARK = "@@dicomvec-docs-end@@"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
VOLATILE = [
    (re.compile(r"\d{8}T\d{6}Z"), "<RUN-ID>"),
    (re.compile(r"\d+(\.\d+)? (s|ms|images/s)\b"), "<N> \\2"),
]


def doc_files() -> List[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclasses.dataclass
class Example:
    path: Path
    start: int          # line index of the opening fence
    end: int            # line index of the closing fence
    indent: str
    kind: str           # bash | sh | shell | console
    needs: Optional[str]
    body: List[str]     # the lines between the fences, indent removed

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.start + 1}"


def examples(path: Path) -> List[Example]:
    """The shell examples of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, info = match.group("indent"), match.group("info").strip()
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        words = info.split()
        if words and words[0] in SHELLS:
            needs = next((w.split("=", 1)[1] for w in words[1:] if w.startswith("needs=")),
                         None)
            body = [line[len(indent):] if line.startswith(indent) else line
                    for line in lines[i + 1:j]]
            found.append(Example(path, i, j, indent, words[0], needs, body))
        i = j + 1
    return found


# --------------------------------------------------------------------------- console blocks


def console_steps(body: List[str]) -> List[Dict[str, object]]:
    """``$ command`` (with continuation lines) → {"command": str, "output": [lines]}."""
    steps: List[Dict[str, object]] = []
    i = 0
    while i < len(body):
        line = body[i]
        if line.startswith("$ "):
            command = [line[2:]]
            while command[-1].endswith("\\") and i + 1 < len(body):
                i += 1
                command.append(body[i])
            steps.append({"command": "\n".join(command), "output": []})
        elif steps:
            steps[-1]["output"].append(line)
        i += 1
    return steps


def mask(lines: List[str]) -> List[str]:
    out = []
    for line in lines:
        for pattern, replacement in VOLATILE:
            line = pattern.sub(replacement, line)
        out.append(line.rstrip())
    while out and not out[-1]:
        out.pop()
    return out


def environment() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("NVIDIA_API_KEY", None)
    # the venv running this (its `dicomvec` and `python`), whatever DICOMVEC_VENV named it
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "100"
    return env


def run_console(example: Example, cwd: Path) -> List[List[str]]:
    """Run the block's commands in one shell; each command's output lines (log lines
    dropped)."""
    steps = console_steps(example.body)
    script = []
    for step in steps:
        script += [str(step["command"]), f"__rc=$?; echo {END_MARK}; (exit $__rc)"]
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    chunks = proc.stdout.split(END_MARK + "\n")
    outputs = [[line for line in chunk.splitlines() if not LOG_LINE.match(line)]
               for chunk in chunks[:len(steps)]]
    if len(outputs) < len(steps):
        raise AssertionError(f"{example.name}: the block stopped early:\n{proc.stdout[-3000:]}")
    return outputs


def check_console(example: Example, cwd: Path) -> None:
    steps = console_steps(example.body)
    for step, actual in zip(steps, run_console(example, cwd)):
        expected = mask(list(step["output"]))
        got = mask(actual)
        if expected != got:
            raise AssertionError(
                f"{example.name}: `{step['command']}` printed something else than the doc "
                f"shows (regenerate with `python -m tests.docs_examples --write`):\n--- doc\n"
                + "\n".join(expected) + "\n--- actual\n" + "\n".join(got))


def run_script(example: Example, cwd: Path) -> None:
    script = "set -euo pipefail\n" + "\n".join(example.body)
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{example.name}: exit status {proc.returncode}; mark it "
                             f"`needs=WHAT` if it needs a server or key:\n{proc.stdout[-3000:]}")


def run_example(example: Example, cwd: Path) -> None:
    if example.kind == "console":
        check_console(example, cwd)
    else:
        run_script(example, cwd)


# --------------------------------------------------------------------------- workspace


def make_local_run(target: Path) -> Path:
    """``./run_local.sh`` run in ``target`` (its output: ``target/out``, paths relative as in
    the docs); returns ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    env = environment()
    env.pop("DICOMVEC_OUT", None)
    proc = subprocess.run(["bash", str(REPO / "run_local.sh")], env=env, cwd=target,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"run_local.sh failed:\n{proc.stdout[-3000:]}")
    return target


def copy_workspace(source: Path, target: Path) -> Path:
    """A private copy of a run_local.sh workspace (sample files hard-linked, not copied)."""
    out = source / "out"
    shutil.copytree(out / "sample", target / "out" / "sample", copy_function=os.link)
    for entry in out.iterdir():
        if entry.name == "sample":
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / "out" / entry.name)
        else:
            shutil.copy2(entry, target / "out" / entry.name)
    return target


# --------------------------------------------------------------------------- regenerate


def regenerate(path: Path, cwd: Path) -> bool:
    """Re-run the runnable examples of ``path`` in order (later ones see earlier ones'
    effects) and write each console block's real output into it. Returns whether it changed."""
    original = path.read_text()
    for index in range(len(examples(path))):
        example = examples(path)[index]  # re-read: an earlier block may have changed length
        if example.needs:
            continue
        if example.kind != "console":
            run_script(example, cwd)
            continue
        body: List[str] = []
        for step, output in zip(console_steps(example.body), run_console(example, cwd)):
            body += ["$ " + line if n == 0 else line
                     for n, line in enumerate(str(step["command"]).split("\n"))]
            body += [line.rstrip() for line in output]
        while body and not body[-1]:
            body.pop()
        lines = path.read_text().splitlines()
        lines[example.start + 1:example.end] = [example.indent + line if line else line
                                                for line in body]
        path.write_text("\n".join(lines) + "\n")
    return path.read_text() != original


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="regenerate the outputs shown in the docs")
    parser.add_argument("--write", action="store_true", required=True)
    parser.add_argument("--work", default=str(REPO / ".cache" / "docs-run"))
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    base = make_local_run(work / "local")
    for name in args.files or [str(p) for p in doc_files()]:
        path = Path(name).resolve()
        cwd = copy_workspace(base, work / path.stem)
        changed = regenerate(path, cwd)
        print(f"{path.relative_to(REPO)}: {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
