"""Watch a submitted Beam job until it ends, and stop it for real when asked.

In: the ``PipelineResult`` of ``pipeline.run()``, the pipeline options and dicomvec's options.
Out: dicomvec's counters (``{"matched": n, "write_ok": n, ...}``) once the job has ended, or
``JobInterrupted`` when SIGINT / SIGTERM stopped it.

Why this exists: on Flink (FlinkRunner, or PortableRunner against a Flink job server) the
portable result reports **no metrics while the job runs**, and ``result.cancel()`` stops the job
server's invocation but leaves the **Flink job RUNNING** on the cluster. So when the Flink REST
API is known (``--flink_master HOST:PORT``, also accepted with ``--runner PortableRunner``) the
monitor finds the job by its name (``--job_name``, which dicomvec makes unique per run), reads
the live counters from Flink's REST metrics (Beam's user counters are exported per operator as
``<subtask>.<operator>.dicomvec_<name>``), and cancels it through REST
(``PATCH /jobs/<jid>?mode=cancel``), then waits until Flink reports it CANCELED.

Stopping rules: SIGINT / SIGTERM → cancel the job; a batch job raises ``JobInterrupted`` (the
CLI exits 128 + signal number and says what was cancelled), a streaming job — which only ends
this way or idle — returns its counters for the usual summary. Streaming only: once nothing is in
flight and the counters have not moved for ``--stop-after-idle`` seconds (at least two
dead-letter periods, so the last dead letters are written) → cancel, return the counters.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import signal
import time
import urllib.error
import urllib.request
from typing import Dict, Optional

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from dicomvec import counters as C
from dicomvec.counters import NAMESPACE

log = logging.getLogger(__name__)

TERMINAL_FLINK = {"FINISHED", "CANCELED", "FAILED", "SUSPENDED"}
# a cluster that has had no TaskManager this long cannot run the job: say so, do not wait
NO_TASKMANAGER_GRACE_S = 60.0
NO_TASKMANAGER_ADVICE = ("see the TaskManager's log for why it stopped, then run the same "
                         "command again (stored images are skipped)")
# a job that just ended frees its slots within seconds: preflight waits this long for them
SLOTS_WAIT_S = 15.0


class JobInterrupted(RuntimeError):
    """SIGINT / SIGTERM stopped the job; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, what: str):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {what}")


class JobFailed(RuntimeError):
    """The job failed or cannot go on: the runner reports it FAILED (e.g. Flink's
    ``NoResourceAvailableException``), or its cluster has lost every TaskManager. One line
    saying what happened and where to look; exit status 1."""

    exit_code = 1


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:")


def root_cause(message: str, limit: int = 300) -> str:
    """The line of a runner's error text that says what went wrong: the last ``Caused by:`` of a
    Java stack trace (its root cause), else the first non-empty line; at most ``limit`` chars."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    causes = [line[len("Caused by:"):].strip() for line in lines
              if line.startswith("Caused by:")]
    if not causes:  # a Python traceback: its last "SomeError: message" line
        causes = [line for line in lines if _EXCEPTION_LINE.match(line)]
    text = causes[-1] if causes else (lines[0] if lines else "no message from the runner")
    text = re.sub(r"^Pipeline \S+ failed in state \w+:\s*", "", text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def beam_counters(result, live: bool = False) -> Dict[str, int]:
    """dicomvec's counters from Beam's metrics, summed over steps. ``live``: a fresh reading of a
    running job (the portable runners' result caches its first metrics response)."""
    if live and hasattr(result, "_metrics"):
        result._metrics = None
    totals: Dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = C.base_name(counter.key.metric.name)
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


def in_flight(counters: Dict[str, int], names: C.JobCounters = C.IMAGES) -> int:
    """Files seen arriving or matched but not yet stored, skipped, merged as duplicates or
    dead-lettered."""
    settled = (counters.get(names.stored, 0) + counters.get(names.already_stored, 0)
               + counters.get(names.duplicates, 0) + counters.get(C.NOT_DICOM_IGNORED, 0)
               + names.failures(counters))
    arriving = counters.get(C.ARRIVING, 0) - counters.get(C.ARRIVED, 0)
    return counters.get(names.matched, 0) - settled + arriving


class FlinkRest:
    """The few Flink REST calls the monitor needs (JSON over HTTP, stdlib only)."""

    def __init__(self, base_url: str, timeout: float = 10.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.base + path, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def jobs(self):
        return self._call("/jobs/overview")["jobs"]

    def find_job(self, name: str, not_before_ms: int = 0) -> Optional[str]:
        """The newest job called ``name`` started at or after ``not_before_ms``."""
        matches = [j for j in self.jobs() if j["name"] == name and j["start-time"] >= not_before_ms]
        return max(matches, key=lambda j: j["start-time"])["jid"] if matches else None

    def overview(self) -> dict:
        """The cluster: ``taskmanagers``, ``slots-total``, ``slots-available``, ``jobs-running``."""
        return self._call("/overview")

    def state(self, jid: str) -> str:
        return self._call(f"/jobs/{jid}")["state"]

    def cancel(self, jid: str) -> None:
        self._call(f"/jobs/{jid}?mode=cancel", method="PATCH")

    def final_counters(self, jid: str) -> Dict[str, int]:
        """Beam user counters of an ended job, from its accumulators."""
        return accumulated_counters(self._call(f"/jobs/{jid}/accumulators"))

    def counters(self, jid: str, namespace: str = NAMESPACE) -> Dict[str, int]:
        """Beam user counters of ``namespace``, summed over operators and subtasks, from the
        live metrics of a running job (empty once the job has ended)."""
        prefix = namespace + "_"
        totals: Dict[str, int] = {}
        for vertex in self._call(f"/jobs/{jid}")["vertices"]:
            base = f"/jobs/{jid}/vertices/{vertex['id']}/metrics"
            ids = [m["id"] for m in self._call(base)
                   if m["id"].rsplit(".", 1)[-1].startswith(prefix)]
            for start in range(0, len(ids), 40):   # keep the query string short
                chunk = ",".join(urllib.request.quote(i, safe="") for i in ids[start:start + 40])
                for metric in self._call(f"{base}?get={chunk}"):
                    name = C.base_name(metric["id"].rsplit(".", 1)[-1][len(prefix):])
                    totals[name] = totals.get(name, 0) + int(float(metric["value"]))
        return totals


def _varint(data: bytes) -> int:
    """A Beam ``sum_int64`` metric payload (VarIntCoder: base-128 varint, two's complement)."""
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value - (1 << 64) if value >= 1 << 63 else value


def accumulated_counters(accumulators: dict, namespace: str = NAMESPACE) -> Dict[str, int]:
    """Beam user counters of ``namespace`` from a Flink job's ``/accumulators`` answer (Beam's
    ``__metricscontainers`` accumulator: monitoring infos with base64 varint payloads)."""
    totals: Dict[str, int] = {}
    for accumulator in accumulators.get("user-task-accumulators", []):
        if accumulator.get("name") != "__metricscontainers":
            continue
        for info in json.loads(accumulator["value"]).get("metrics", {}).get("attempted", []):
            labels = info.get("labels", {})
            if (info.get("urn") == "beam:metric:user:sum_int64:v1"
                    and labels.get("NAMESPACE") == namespace):
                name = C.base_name(labels["NAME"])
                totals[name] = totals.get(name, 0) + _varint(base64.b64decode(info["payload"]))
    return totals


def flink_rest_url(options: PipelineOptions) -> Optional[str]:
    """``http://HOST:PORT`` of the Flink REST API from ``--flink_master``, or None ([auto],
    [local] or not given)."""
    try:
        from apache_beam.options.pipeline_options import FlinkRunnerOptions
        master = options.view_as(FlinkRunnerOptions).flink_master
    except ImportError:  # pragma: no cover
        return None
    if not master or master.startswith("["):
        return None
    return master if "://" in master else f"http://{master}"


def flink_cluster_problem(options: PipelineOptions, wait_s: float = SLOTS_WAIT_S) -> Optional[str]:
    """Why the Flink cluster named by ``--flink_master`` cannot take this job now (its REST API
    does not answer, it has no TaskManager, or fewer free task slots than ``--parallelism``), or
    None. Slots held by a job that is ending are waited for up to ``wait_s``."""
    url = flink_rest_url(options)
    if url is None:
        return None
    from apache_beam.options.pipeline_options import FlinkRunnerOptions
    need = max(1, options.view_as(FlinkRunnerOptions).parallelism or 1)
    rest = FlinkRest(url, timeout=5.0)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            overview = rest.overview()
        except (OSError, ValueError) as exc:
            reason = str(getattr(exc, "reason", "") or exc).splitlines()[0]
            return (f"the Flink REST API at {url} does not answer ({reason}): is --flink_master "
                    f"right and the JobManager running?")
        free, total = overview.get("slots-available", 0), overview.get("slots-total", 0)
        if free >= need:
            return None
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if not overview.get("taskmanagers"):
        return (f"the Flink cluster at {url} has no TaskManager, so no task slot to run the job "
                f"on: start one (scripts/flink/start.sh taskmanager) or see why it stopped in "
                f"its log")
    return (f"the Flink cluster at {url} has {free} free task slot(s) of {total}; this job needs "
            f"{need} (--parallelism): wait for the {overview.get('jobs-running', 0)} running "
            f"job(s) to end, or lower --parallelism")


class JobMonitor:
    """One submitted job: its live counters, its end, and how to stop it (see module doc)."""

    def __init__(self, result, options: PipelineOptions, job_name: str,
                 submitted_ms: int, poll_s: float = 1.0, progress_every_s: float = 30.0,
                 names: C.JobCounters = C.IMAGES):
        self.result = result
        self.names = names
        self.job_name = job_name
        self.submitted_ms = submitted_ms
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        url = flink_rest_url(options)
        self.rest = FlinkRest(url) if url else None
        self.jid: Optional[str] = None
        self.last_counters: Dict[str, int] = {}
        self.stopped_by = ""  # the signal's name when SIGINT / SIGTERM ended a streaming job
        self._last_progress = time.monotonic()
        self._no_taskmanager_since: Optional[float] = None
        self._cluster_checked = 0.0

    # --- reading ---------------------------------------------------------------------------
    def flink_job(self) -> Optional[str]:
        if self.rest is not None and self.jid is None:
            try:
                self.jid = self.rest.find_job(self.job_name, self.submitted_ms - 60_000)
            except (OSError, ValueError, KeyError) as exc:
                log.debug("Flink REST: %s", exc)
            if self.jid:
                log.info("Flink job %s (%s) on %s", self.jid, self.job_name, self.rest.base)
        return self.jid

    def counters(self) -> Dict[str, int]:
        """Live counters: Beam's metrics where the runner reports them, else Flink's REST
        metrics; remembers the last non-empty reading (a cancelled job reports none)."""
        counters: Dict[str, int] = {}
        try:
            counters = beam_counters(self.result, live=True)
        except Exception as exc:  # pylint: disable=broad-except  # a runner without live metrics
            log.debug("no live Beam metrics: %s", exc)
        if not counters and self.flink_job():
            try:
                counters = self.rest.counters(self.jid)
            except (OSError, ValueError, KeyError) as exc:
                log.debug("Flink REST metrics: %s", exc)
        if counters:
            self.last_counters = counters
        return counters

    def final_counters(self) -> Dict[str, int]:
        """Counters after the job ended, each the largest of: the last live reading, Beam's
        final metrics, the Flink job's accumulators. Counters only grow, and on Flink each
        source was seen short once (the job server's answer empty; REST's accumulators a
        snapshot cached while the job still ran)."""
        sources = [dict(self.last_counters)]
        try:
            sources.append(beam_counters(self.result))
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("no final Beam metrics: %s", exc)
        if self.flink_job():
            try:
                sources.append(self.rest.final_counters(self.jid))
            except (OSError, ValueError, KeyError) as exc:
                log.debug("Flink accumulators: %s", exc)
        counters: Dict[str, int] = {}
        for source in sources:
            for name, value in source.items():
                counters[name] = max(counters.get(name, 0), value)
        return counters

    def _progress(self, counters: Dict[str, int]) -> None:
        if counters and time.monotonic() - self._last_progress >= self.progress_every_s:
            self._last_progress = time.monotonic()
            log.info("progress: matched %d, stored %d, dead-lettered %d, in flight %d",
                     counters.get(self.names.matched, 0), counters.get(self.names.stored, 0),
                     self.names.failures(counters), max(0, in_flight(counters, self.names)))

    # --- ending ----------------------------------------------------------------------------
    def cancel(self, timeout_s: float = 60.0) -> str:
        """Cancel the job everywhere it runs; returns what happened, for the user."""
        try:
            if self.result is not None:  # None: the submission was interrupted
                self.result.cancel()
        except Exception as exc:  # pylint: disable=broad-except  # already ended / not supported
            log.debug("result.cancel(): %s", exc)
        if not self.flink_job():
            return "job cancelled"
        deadline = time.monotonic() + timeout_s
        state = "?"
        while time.monotonic() < deadline:
            try:
                state = self.rest.state(self.jid)
                if state in TERMINAL_FLINK:
                    break
                if state not in ("CANCELLING",):
                    self.rest.cancel(self.jid)
            except (OSError, ValueError, KeyError) as exc:
                log.debug("Flink cancel: %s", exc)
            time.sleep(0.5)
        if state not in TERMINAL_FLINK:
            log.error("Flink job %s still %s after %.0f s: cancel it with "
                      "curl -X PATCH '%s/jobs/%s?mode=cancel'", self.jid, state, timeout_s,
                      self.rest.base, self.jid)
        return f"Flink job {self.jid} {state}"

    def cancel_if_submitted(self, wait_s: float = 3.0) -> str:
        """After an interrupted submission (the job server already stopped): cancel the Flink
        job if it reached the cluster (looked for by name for ``wait_s``); what happened."""
        deadline = time.monotonic() + wait_s
        while not self.flink_job() and self.rest is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        if not self.flink_job():
            return "stopped while the job was submitted" + (
                "" if self.rest is not None else " (pass --flink_master HOST:PORT so dicomvec "
                "can check that no job reached Flink)")
        return self.cancel()

    def _check_cluster(self) -> None:
        """Raise ``JobFailed`` (after cancelling) once the cluster has had no TaskManager for
        ``NO_TASKMANAGER_GRACE_S``: the job would wait for slots that never come."""
        now = time.monotonic()
        if self.rest is None or now - self._cluster_checked < 5.0:
            return
        self._cluster_checked = now
        taskmanagers = self._taskmanagers()
        if taskmanagers is None:
            return
        if taskmanagers:
            self._no_taskmanager_since = None
            return
        self._no_taskmanager_since = self._no_taskmanager_since or now
        if now - self._no_taskmanager_since >= NO_TASKMANAGER_GRACE_S:
            self.counters()
            what = self.cancel(timeout_s=20.0)
            raise JobFailed(
                f"the Flink cluster at {self.rest.base} has had no TaskManager for "
                f"{NO_TASKMANAGER_GRACE_S:.0f} s, so the job cannot run ({what}); "
                f"{NO_TASKMANAGER_ADVICE}")

    def _taskmanagers(self) -> Optional[int]:
        """How many TaskManagers the cluster has now; None when its REST API cannot say."""
        try:
            return int(self.rest.overview().get("taskmanagers", 0))
        except (OSError, ValueError) as exc:
            log.debug("Flink REST overview: %s", exc)
            return None

    def exception_history(self) -> str:
        """Where the failed job's exception history can be read."""
        if self.flink_job():
            return (f"exception history: {self.rest.base}/#/job/{self.jid}/exceptions (REST: "
                    f"{self.rest.base}/jobs/{self.jid}/exceptions)")
        if self.rest is not None:
            return f"exception history: the job's Exceptions tab at {self.rest.base}"
        return ("exception history: the runner's log, or the Flink web UI's Exceptions tab of "
                "the job (pass --flink_master HOST:PORT and dicomvec names the page)")

    def _wait_until_finish(self) -> None:
        try:
            self.result.wait_until_finish()
        except Exception as exc:  # pylint: disable=broad-except  # the runner's own error types
            state = ""
            try:
                state = str(self.result.state)
            except Exception:  # pylint: disable=broad-except
                pass
            log.debug("the job ended in %s", state, exc_info=True)
            raise JobFailed(f"the job failed ({self.job_name}): "
                            f"{root_cause(self._error_text(exc))}; {self._cluster_note()}"
                            f"{self.exception_history()}") from None

    def _cluster_note(self) -> str:
        """After a failure: what the cluster says about it, ending in "; " ("" when all is
        well or unknown). A Flink job that lost its only TaskManager ends, once its restart
        strategy is spent, in Flink's own "NoResourceAvailableException: Could not acquire the
        minimum required resources"; the user is told the plain fact beside it."""
        if self.rest is None or self._taskmanagers() != 0:
            return ""
        return (f"the Flink cluster at {self.rest.base} has no TaskManager now: "
                f"{NO_TASKMANAGER_ADVICE}; ")

    def _error_text(self, exc: BaseException) -> str:
        """The runner's error messages (a portable runner keeps the job's messages; the
        exception itself carries only the last one, often "Error running pipeline."), then the
        exception's own text."""
        texts = []
        for message in getattr(self.result, "_messages", None) or []:
            try:
                response = message.message_response
                if message.HasField("message_response") and response.importance >= 5:
                    texts.append(response.message_text)  # 5: JOB_MESSAGE_ERROR
            except (AttributeError, ValueError):
                continue
        return "\n".join(texts + [str(exc)])

    def _terminal(self) -> bool:
        try:
            if PipelineState.is_terminal(self.result.state):
                return True
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("result.state: %s", exc)
        return False

    def watch(self, streaming: bool, stop_after_idle: float = 0.0,
              dead_letter_frequency: float = 0.0) -> Dict[str, int]:
        """Wait for the job (see module doc); returns its final counters."""
        stop = {"signal": None}

        def request_stop(signum, _frame):
            stop["signal"] = signum
            log.warning("%s: stopping the job", signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        idle_limit = (max(stop_after_idle, 2 * dead_letter_frequency + 1)
                      if streaming and stop_after_idle else None)
        last, last_change = None, time.monotonic()
        try:
            while stop["signal"] is None:
                if self._terminal():
                    self._wait_until_finish()  # raises JobFailed if the job failed
                    return self.final_counters()
                time.sleep(self.poll_s)
                if not streaming and self.rest is None:
                    continue  # nothing to read while a batch job runs without Flink REST
                self._check_cluster()
                counters = self.counters()
                self._progress(counters)
                if counters != last:
                    last, last_change = counters, time.monotonic()
                elif (idle_limit and counters and in_flight(counters, self.names) <= 0
                      and time.monotonic() - last_change >= idle_limit):
                    log.info("idle for %.0f s with nothing in flight: stopping", idle_limit)
                    self.counters()
                    self.cancel()
                    return dict(self.last_counters)
                elif (idle_limit and not counters and self.rest is None
                      and time.monotonic() - last_change >= idle_limit):
                    log.warning("no counters from the runner (pass --flink_master HOST:PORT "
                                "so dicomvec can read Flink's metrics): cannot tell idle from "
                                "busy, so the job keeps running; stop it with Ctrl-C")
                    last_change = time.monotonic()
            signum = stop["signal"]
            self.counters()  # last reading before the metrics go away
            what = self.cancel()
            if streaming:  # the documented way to end a stream: stop, then the usual summary
                self.stopped_by = signal.Signals(signum).name
                log.warning("stopped by %s: %s", self.stopped_by, what)
                return dict(self.last_counters)
            pending = (max(0, in_flight(self.last_counters, self.names)) if self.last_counters
                       else None)
            raise JobInterrupted(signum, what + (
                f"; {pending} file(s) were in flight and are not stored: run the same command "
                f"again to finish them (stored images are skipped)" if pending else ""))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

