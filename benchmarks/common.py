"""Helpers the benchmarks share: the machine's description, the NV-CLIP contract server in its
own process, one pipeline run on the local engine, a synthetic archive generated once into a
cache folder, per-process peak RSS from ``/proc``, and best/median over interleaved rounds.

Nothing here times anything by itself; each benchmark measures its baseline in the same run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- machine


def machine() -> Dict[str, object]:
    """CPU model, cores, memory, library versions, the code's commit and the load average."""
    import numpy as np
    import PIL
    import pydicom
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "commit": commit or "unknown",
            "numpy": np.__version__, "pillow": PIL.__version__, "pydicom": pydicom.__version__,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg_start": os.getloadavg()}


# --------------------------------------------------------------------------- memory


def status_mb(field: str, pid: object = "self") -> Optional[float]:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of a process in MB from ``/proc/<pid>/status`` (per
    address space: fresh after exec, unlike ``ru_maxrss`` which a child inherits from its
    parent). None when the process is gone; for ``self`` without /proc, ``ru_maxrss``."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        if pid == "self":
            return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def descendants(pid: int) -> List[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from ``/proc``."""
    parents: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds a live process has used so far (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_line(pid: int) -> List[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


# --------------------------------------------------------------------------- NV-CLIP server


class _Server:
    def __init__(self, url: str):
        self.url = url


@contextlib.contextmanager
def server_process(latency: float, fault_rate: float = 0.0) -> Iterator[_Server]:
    """The contract server in its own process, as a real endpoint would be (no shared GIL);
    ``fault_rate``: share of requests answered 500 / 429 / dropped."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.nvclip_server", "--latency",
                             str(latency), "--fault-rate", str(fault_rate)],
                            cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        yield _Server(proc.stdout.readline().strip())
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- data


def _generator_digest() -> str:
    """Changes whenever the generator's code does (a cached archive from older code is stale)."""
    from dicomvec import synthetic
    return hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]


def cached_archive(cache: Path, count: int, size: Tuple[int, int],
                   syntaxes: Sequence[str] = ("native",), seed: int = 0) -> Path:
    """A synthetic archive (``dicomvec.synthetic``) of ``count`` good images under ``cache``,
    generated once and reused while the generator's code is unchanged and every file its
    manifest lists is there (else it is wiped and made again). Returns the archive root (the
    DICOMs are under ``<root>/files``)."""
    from dicomvec import synthetic
    root = Path(cache) / f"{'-'.join(syntaxes)}-{size[0]}x{size[1]}-n{count}-seed{seed}"
    stamp = {"count": count, "size": list(size), "syntaxes": list(syntaxes), "seed": seed,
             "generator": _generator_digest()}
    manifest, done = root / synthetic.MANIFEST, root / "complete.json"
    if done.exists() and manifest.exists() and json.loads(done.read_text()) == stamp:
        listed = manifest.read_text().splitlines()[1:]
        if len(listed) == count and all(Path(line.split(",", 1)[0]).exists()
                                        for line in listed):
            return root
    shutil.rmtree(root, ignore_errors=True)  # no stale files left for the input glob to match
    synthetic.generate(root, count, size, tuple(syntaxes), 0, seed=seed)
    done.write_text(json.dumps(stamp))
    return root


def dicom_paths(root: Path) -> List[Path]:
    """The archive's DICOM files in a stable order."""
    return sorted((Path(root) / "files").rglob("*.dcm"))


# --------------------------------------------------------------------------- pipeline


def ingest_argv(work: Path, name: str, files: Path, batch_size: int, workers: int,
                *extra: str) -> List[str]:
    """``dicomvec run`` flags for one run over ``files/**/*.dcm`` into a fresh SQLite file."""
    return ["--input", str(Path(files) / "**" / "*.dcm"),
            "--sink", f"sqlite:///{work}/{name}.db",
            "--dead-letter", str(Path(work) / f"dl-{name}"),
            "--run-id", name, "--batch-size", str(batch_size),
            "--direct_num_workers", str(workers), *extra]


def pipeline_rate(work: Path, name: str, files: Path, batch_size: int, workers: int,
                  *extra: str) -> Dict[str, float]:
    """Run the pipeline in this process; images stored, dead letters, wall s and images/s."""
    from dicomvec.pipeline.run import run_ingest
    summary = run_ingest(ingest_argv(work, name, files, batch_size, workers, *extra))
    return {"stored": summary.stored, "dead_lettered": summary.dead_lettered_total,
            "wall_s": round(summary.wall_time_s, 2),
            "img_s": round(summary.stored / summary.wall_time_s, 2)}


# --------------------------------------------------------------------------- rounds


class Rounds:
    """Samples per configuration over interleaved rounds; best and median of a key."""

    def __init__(self) -> None:
        self.samples: Dict[str, List[Dict[str, object]]] = {}

    def add(self, name: str, sample: Dict[str, object]) -> None:
        self.samples.setdefault(name, []).append(sample)

    def best(self, name: str, key: str = "img_s") -> Dict[str, object]:
        """The sample with the highest ``key`` (noise on a shared machine only slows runs)."""
        return max(self.samples[name], key=lambda s: s[key])

    def median(self, name: str, key: str = "img_s") -> float:
        return statistics.median(s[key] for s in self.samples[name])

    def values(self, name: str, key: str = "img_s") -> List[object]:
        return [s[key] for s in self.samples[name]]
