"""What a device reports about its inferences, and what it keeps for retraining.

Runs in the inference process on the device (stdlib and numpy only, Python 3.8+). The
process hands every result to :class:`Telemetry`, which

- **aggregates** them per model version into a summary every ``summary_seconds``
  (published on the summary topic): counts, errors by kind, a latency histogram and a
  confidence histogram, low-confidence and anomaly counts;
- **chooses** which results are published one by one (``results``): ``all``,
  ``sampled`` (a ``sample_rate`` share of them, plus every notable one) or ``notable``
  (only errors, results below ``low_confidence`` and anomalies);
- **batches** the chosen results into one MQTT message of up to ``batch_bytes`` (or
  :data:`MAX_BATCH_RECORDS`) and at most ``batch_seconds`` old: IoT Core meters messages in
  5 KB steps, so a batch of a dozen results costs what one result did;
- optionally **captures** the inputs of sampled or notable requests
  (:class:`CaptureSpool`) for retraining.

Wire formats (JSON, what the cloud side's IoT rules read):

- results and error results: ``{"schema": "neo-edge.results/1", "device": <thing>,
  "results": [<result>, ...]}``; each result as ``edge_inference`` makes it, plus
  ``"reason"``: why it was published (``all``, ``sampled``, ``error``,
  ``low_confidence``, ``anomaly``);
- summaries: one message per model version and window, see :meth:`Window.summary`.

Sampling is a function of the request id (:func:`sampled`), not a coin flip: the same
request is sampled for publishing and for capture alike, so every captured input has its
result among the published ones when the capture rate is at most the sample rate.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import _settings


__all__ = ["CONFIDENCE_BOUNDS", "CaptureSpool", "FolderUploader", "LATENCY_BOUNDS_MS",
           "MAX_BATCH_RECORDS", "RESULTS_SCHEMA", "S3Uploader", "SUMMARY_SCHEMA", "Telemetry",
           "TelemetryConfig", "TelemetryConfigError", "Window", "label_captures", "sampled"]

RESULTS_SCHEMA = "neo-edge.results/1"
SUMMARY_SCHEMA = "neo-edge.summary/1"
#: The IoT rule's Firehose action in batch mode takes at most 500 records per message
#: (``FirehoseAction.batchMode`` in botocore's iot service model).
MAX_BATCH_RECORDS = 500
#: IoT Core's largest message is 128 KB.
MAX_MESSAGE_BYTES = 128 * 1024
#: Upper bounds of the latency histogram's buckets, in milliseconds; one more bucket above.
LATENCY_BOUNDS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
                     1000.0, 2500.0, 5000.0, 10000.0)
#: Upper bounds of the confidence histogram's buckets (the last one is 1).
CONFIDENCE_BOUNDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RESULT_MODES = ("all", "sampled", "notable")
CAPTURE_MODES = ("off", "sampled", "notable")


class TelemetryConfigError(ValueError):
    """A telemetry setting is malformed: the message names it and the value received."""


def _number(name: str, raw: Any, low: float, high: float = math.inf) -> float:
    return _settings.number(TelemetryConfigError, "telemetry", name, raw, low, high)


def _choice(name: str, raw: Any, choices: Tuple[str, ...]) -> str:
    if raw not in choices:
        raise TelemetryConfigError(f"telemetry setting {name} must be one of {', '.join(choices)}; "
                                   f"got {raw!r}")
    return raw


#: Component configuration key -> (field, environment variable).
_KEYS = {
    "summaryIntervalSeconds": ("summary_seconds", "NEO_EDGE_SUMMARY_SECONDS"),
    "publishResults": ("results", "NEO_EDGE_PUBLISH_RESULTS"),
    "resultsSampleRate": ("sample_rate", "NEO_EDGE_SAMPLE_RATE"),
    "lowConfidenceThreshold": ("low_confidence", "NEO_EDGE_LOW_CONFIDENCE"),
    "resultsBatchSeconds": ("batch_seconds", "NEO_EDGE_RESULTS_BATCH_SECONDS"),
    "capture": ("capture", "NEO_EDGE_CAPTURE"),
    "captureSampleRate": ("capture_rate", "NEO_EDGE_CAPTURE_RATE"),
    "captureDestination": ("capture_destination", "NEO_EDGE_CAPTURE_DESTINATION"),
    "captureMaxMegabytes": ("capture_max_mb", "NEO_EDGE_CAPTURE_MAX_MB"),
    "captureUploadSeconds": ("capture_upload_seconds", "NEO_EDGE_CAPTURE_UPLOAD_SECONDS"),
}


@dataclass(frozen=True)
class TelemetryConfig:
    """What the component configuration says about telemetry (keys in :data:`_KEYS`).

    ``summary_seconds`` 0 turns summaries off; ``batch_seconds`` 0 publishes each chosen
    result at once (a batch of one). ``capture_destination`` is ``s3://bucket/prefix`` (the
    component's S3 access, through the token exchange service) or a local folder; empty
    keeps captures on the device until one is configured.
    """

    summary_seconds: float = 60.0
    results: str = "all"
    sample_rate: float = 0.01
    low_confidence: float = 0.5
    batch_seconds: float = 1.0
    batch_bytes: int = 5000
    capture: str = "off"
    capture_rate: float = 0.01
    capture_destination: str = ""
    capture_max_mb: float = 100.0
    capture_upload_seconds: float = 300.0

    def __post_init__(self) -> None:
        _number("summaryIntervalSeconds", self.summary_seconds, 0, 86400)
        _choice("publishResults", self.results, RESULT_MODES)
        _number("resultsSampleRate", self.sample_rate, 0, 1)
        _number("lowConfidenceThreshold", self.low_confidence, 0, 1)
        _number("resultsBatchSeconds", self.batch_seconds, 0, 60)
        _number("batch_bytes", self.batch_bytes, 256, MAX_MESSAGE_BYTES // 2)
        _choice("capture", self.capture, CAPTURE_MODES)
        _number("captureSampleRate", self.capture_rate, 0, 1)
        _number("captureMaxMegabytes", self.capture_max_mb, 0)
        _number("captureUploadSeconds", self.capture_upload_seconds, 1)
        dest = self.capture_destination
        if not isinstance(dest, str) or any(c in dest for c in "\0\n\r"):
            raise TelemetryConfigError(f"telemetry setting captureDestination must be s3://bucket/"
                                       f"prefix or a folder; got {dest!r}")
        if dest.startswith("s3://") and not dest[5:].split("/", 1)[0]:
            raise TelemetryConfigError(f"telemetry setting captureDestination must name a bucket; "
                                       f"got {dest!r}")

    def updated(self, values: Mapping[str, Any]) -> "TelemetryConfig":
        """A copy with the component configuration keys in ``values`` applied (others kept)."""
        changes: Dict[str, Any] = {}
        for key, (name, _) in _KEYS.items():
            if key in values and values[key] is not None and values[key] != "":
                changes[name] = _coerce(name, values[key])
        return replace(self, **changes)

    @classmethod
    def from_environment(cls, env: Optional[Mapping[str, str]] = None) -> "TelemetryConfig":
        """The configuration the recipe's ``Setenv`` passes (unset variables: defaults)."""
        return _settings.from_environment(cls, _KEYS, env)


def _coerce(name: str, value: Any) -> Any:
    if name in ("results", "capture", "capture_destination"):
        return str(value).strip()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # __post_init__ names it
    return value


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` falls in the ``rate`` share (a hash of the id: reproducible)."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    digest = hashlib.sha256(str(request_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64) < rate


def _now_iso(seconds: Optional[float] = None) -> str:
    when = dt.datetime.fromtimestamp(time.time() if seconds is None else seconds, dt.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bucket(bounds: Tuple[float, ...], value: float) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


@dataclass
class Window:
    """One model version's figures over one summary interval."""

    model_name: str
    model_version: str
    start: float
    inferences: int = 0
    errors: Dict[str, int] = field(default_factory=dict)
    low_confidence: int = 0
    anomalies: int = 0
    published: int = 0
    captured: int = 0
    latency_counts: List[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    latency_sum: float = 0.0
    latency_min: Optional[float] = None
    latency_max: Optional[float] = None
    confidence_counts: List[int] = field(default_factory=lambda: [0] * len(CONFIDENCE_BOUNDS))

    def add(self, result: Mapping[str, Any], notable: Optional[str]) -> None:
        error = result.get("error")
        if error:
            kind = str(error.get("type") if isinstance(error, Mapping) else error) or "Error"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        self.inferences += 1
        latency = result.get("latency_ms")
        if isinstance(latency, (int, float)) and not isinstance(latency, bool) and latency >= 0:
            self.latency_counts[_bucket(LATENCY_BOUNDS_MS, latency)] += 1
            self.latency_sum += latency
            self.latency_min = latency if self.latency_min is None else min(self.latency_min, latency)
            self.latency_max = latency if self.latency_max is None else max(self.latency_max, latency)
        confidence = result.get("confidence")
        if isinstance(confidence, (int, float)) and not isinstance(confidence, bool):
            self.confidence_counts[_bucket(CONFIDENCE_BOUNDS, min(max(confidence, 0.0), 1.0))] += 1
        if notable == "low_confidence":
            self.low_confidence += 1
        elif notable == "anomaly":
            self.anomalies += 1

    def summary(self, device: str, end: float) -> Dict[str, Any]:
        """The summary message: counts, errors by kind and the two histograms (``counts[i]``
        is the number of values at or below ``bounds[i]`` and above ``bounds[i - 1]``; the
        latency histogram has one more count, above its last bound)."""
        return {
            "schema": SUMMARY_SCHEMA, "device": device, "model_name": self.model_name,
            "model_version": self.model_version, "window_start": _now_iso(self.start),
            "window_end": _now_iso(end), "inferences": self.inferences,
            "errors": sum(self.errors.values()), "errors_by_kind": dict(sorted(self.errors.items())),
            "low_confidence": self.low_confidence, "anomalies": self.anomalies,
            "published": self.published, "captured": self.captured,
            "latency_ms": {"bounds": list(LATENCY_BOUNDS_MS), "counts": list(self.latency_counts),
                           "sum": round(self.latency_sum, 3), "min": self.latency_min,
                           "max": self.latency_max},
            "confidence": {"bounds": list(CONFIDENCE_BOUNDS),
                           "counts": list(self.confidence_counts)},
        }


class Telemetry:
    """Summaries, result selection and batching, and capture, for one inference process.

    Parameters
    ----------
    config:
        :class:`TelemetryConfig`.
    publish:
        ``publish(topic, message)``: the process's IoT Core publisher (it may raise; the
        batch is then counted as lost and the process goes on).
    device:
        The thing name.
    summary_topic:
        Where summaries go.
    capture_dir:
        The capture spool's folder. Default: no capture, whatever ``config.capture`` says.
    uploader:
        What uploads the spool's files. Default: made from ``config.capture_destination``.
    clock:
        Seconds, for the windows and batch ages (tests). Default: ``time.time``.
    """

    def __init__(self, config: TelemetryConfig, publish: Callable[[str, Mapping[str, Any]], None],
                 *, device: str, summary_topic: str, capture_dir: Optional[str] = None,
                 uploader: Any = None, clock: Callable[[], float] = time.time,
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self._publish = publish
        self.device = device
        self.summary_topic = summary_topic
        self._clock = clock
        self._on_error = on_error or (lambda message: None)
        self._lock = threading.RLock()
        self._windows: Dict[Tuple[str, str], Window] = {}
        self._window_start = clock()
        self._batches: Dict[str, List[Tuple[Dict[str, Any], int]]] = {}
        self._batch_started: Dict[str, float] = {}
        self.lost = 0
        self._capture_dir = capture_dir
        self._uploader = uploader
        self.spool: Optional[CaptureSpool] = None
        self._configure_capture()

    def _configure_capture(self) -> None:
        config = self.config
        if config.capture == "off" or not self._capture_dir:
            self.spool = None
            return
        uploader = self._uploader
        if uploader is None and config.capture_destination:
            uploader = make_uploader(config.capture_destination)
        if self.spool is None:
            self.spool = CaptureSpool(self._capture_dir, device=self.device,
                                      max_bytes=int(config.capture_max_mb * 1024 * 1024),
                                      uploader=uploader,
                                      upload_seconds=config.capture_upload_seconds,
                                      clock=self._clock)
        else:
            self.spool.uploader = uploader
            self.spool.max_bytes = int(config.capture_max_mb * 1024 * 1024)
            self.spool.upload_seconds = config.capture_upload_seconds

    def reconfigure(self, values: Mapping[str, Any]) -> None:
        """Apply a component configuration update; a bad value is refused whole (and raised)."""
        updated = self.config.updated(values)
        with self._lock:
            self.config = updated
            self._configure_capture()

    # -- per result ------------------------------------------------------------------

    def notable(self, result: Mapping[str, Any]) -> Optional[str]:
        """Why a result matters on its own (``error``, ``anomaly``, ``low_confidence``), or None."""
        if result.get("error"):
            return "error"
        if result.get("anomaly") is True:
            return "anomaly"
        confidence = result.get("confidence")
        if (isinstance(confidence, (int, float)) and not isinstance(confidence, bool)
                and confidence < self.config.low_confidence):
            return "low_confidence"
        return None

    def record(self, topic: str, result: Mapping[str, Any],
               inputs: Optional[Mapping[str, np.ndarray]] = None) -> Optional[str]:
        """Count ``result``; publish it (batched) and capture its inputs if chosen. Returns
        why it was published, or None."""
        config = self.config
        notable = self.notable(result)
        request_id = str(result.get("request_id", ""))
        reason: Optional[str] = None
        if config.results == "all":
            reason = notable or "all"
        elif notable is not None:
            reason = notable
        elif config.results == "sampled" and sampled(request_id, config.sample_rate):
            reason = "sampled"
        captured = False
        spool = self.spool
        if spool is not None and inputs and not result.get("error"):
            if (notable is not None and config.capture in ("sampled", "notable")) or (
                    config.capture == "sampled" and sampled(request_id, config.capture_rate)):
                captured = spool.add(dict(result, reason=notable or "sampled"), inputs)
        with self._lock:
            key = (str(result.get("model_name") or "unknown"),
                   str(result.get("model_version") or "unknown"))
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = Window(key[0], key[1], self._window_start)
            window.add(result, notable)
            window.published += reason is not None
            window.captured += captured
            if reason is not None:
                message = dict(result, reason=reason)
                size = len(json.dumps(message, separators=(",", ":"), default=str)) + 1
                batch = self._batches.setdefault(topic, [])
                if batch and sum(s for _, s in batch) + size > config.batch_bytes:
                    self._flush_topic(topic)
                    batch = self._batches.setdefault(topic, [])
                if not batch:
                    self._batch_started[topic] = self._clock()
                batch.append((message, size))
                if len(batch) >= MAX_BATCH_RECORDS or config.batch_seconds <= 0:
                    self._flush_topic(topic)
        self.tick()
        return reason

    # -- timers ----------------------------------------------------------------------

    def tick(self) -> None:
        """Publish what is due: batches older than ``batch_seconds``, the summaries at the end
        of a window, spooled captures on their schedule. Cheap when nothing is due."""
        now = self._clock()
        with self._lock:
            for topic in [t for t, b in self._batches.items()
                          if b and now - self._batch_started.get(t, now) >= self.config.batch_seconds]:
                self._flush_topic(topic)
            if self.config.summary_seconds > 0 and now - self._window_start >= self.config.summary_seconds:
                self._flush_summaries(now)
        if self.spool is not None:
            self.spool.maybe_upload()

    def flush(self) -> None:
        """Publish everything now (at shutdown): batches, summaries, and the spool's files."""
        now = self._clock()
        with self._lock:
            for topic in list(self._batches):
                self._flush_topic(topic)
            if self.config.summary_seconds > 0:
                self._flush_summaries(now)
        if self.spool is not None:
            self.spool.upload(force=True)

    def _send(self, topic: str, message: Mapping[str, Any], records: int) -> None:
        try:
            self._publish(topic, message)
        except Exception as exc:  # the figures are lost, the process is not
            self.lost += records
            self._on_error(f"could not publish to {topic}: {exc!r}")

    def _flush_topic(self, topic: str) -> None:
        batch = self._batches.pop(topic, [])
        self._batch_started.pop(topic, None)
        if batch:
            self._send(topic, {"schema": RESULTS_SCHEMA, "device": self.device,
                               "results": [m for m, _ in batch]}, len(batch))

    def _flush_summaries(self, now: float) -> None:
        windows, self._windows = self._windows, {}
        self._window_start = now
        for window in windows.values():
            self._send(self.summary_topic, window.summary(self.device, now), 1)


# ---------------------------------------------------------------------------------------
# Capture for retraining


#: The columns of a capture's sidecar (``<file>.jsonl``, one line per CSV row).
SIDECAR_FIELDS = ("row", "request_id", "model_name", "model_version", "prediction",
                  "confidence", "reason", "timestamp")


class CaptureSpool:
    """A bounded folder of captured inputs, uploaded on a schedule.

    Rows go to ``<dir>/open/<model>-<version>-<device>-<start>.csv`` in the layout of the
    training channels (``training/train.py``): no header, the **label in the first column**
    (left empty: the place a labeller fills), then the input's values flattened. Beside
    each CSV a ``.jsonl`` sidecar holds, per row, the request id, model name and version,
    the prediction and its confidence. A file is closed after ``rows_per_file`` rows or at
    an upload; closed files are uploaded (``uploader.upload(path, relative_key)``) and
    deleted. When the folder would pass ``max_bytes``, new captures are dropped (and
    counted in ``dropped``) until uploads make room: the disk never fills.
    """

    def __init__(self, folder: str, *, device: str, max_bytes: int, uploader: Any = None,
                 upload_seconds: float = 300.0, rows_per_file: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        (self.folder / "open").mkdir(parents=True, exist_ok=True)
        (self.folder / "closed").mkdir(parents=True, exist_ok=True)
        self.device = device
        self.max_bytes = max_bytes
        self.uploader = uploader
        self.upload_seconds = upload_seconds
        self.rows_per_file = rows_per_file
        self._clock = clock
        self._lock = threading.Lock()
        self._open: Dict[Tuple[str, str], Tuple[Path, int]] = {}
        self._last_upload = clock()
        self.dropped = 0
        self.uploaded: List[str] = []
        self.failures = 0
        # Files a previous run left open are closed now: nothing captured is lost to a restart.
        for path in (self.folder / "open").glob("*.csv"):
            self._close(path)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def add(self, result: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> bool:
        """Append one request's inputs and prediction; False when the spool is full."""
        import numpy as np

        values = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1)
                                 for _, v in sorted(inputs.items())])
        row = io.StringIO()
        csv.writer(row).writerow([""] + [repr(float(v)) if not float(v).is_integer()
                                         else str(int(v)) for v in values.tolist()])
        labels = result.get("labels")
        side = {"request_id": result.get("request_id"), "model_name": result.get("model_name"),
                "model_version": result.get("model_version"),
                "prediction": labels[0] if isinstance(labels, list) and labels else
                result.get("value", result.get("anomaly_score")),
                "confidence": result.get("confidence"), "reason": result.get("reason"),
                "timestamp": result.get("timestamp")}
        with self._lock:
            data = row.getvalue().encode()
            if self.size() + len(data) + 512 > self.max_bytes:
                self.dropped += 1
                return False
            key = (str(result.get("model_name") or "unknown"),
                   str(result.get("model_version") or "unknown"))
            path, rows = self._open.get(key, (None, 0))
            if path is None:
                stamp = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
                name = f"{_safe(key[0])}-{_safe(key[1])}-{_safe(self.device)}-" \
                       f"{stamp:%Y%m%dT%H%M%S}-{os.getpid()}-{len(self.uploaded) + len(self._open)}"
                path = self.folder / "open" / f"{name}.csv"
            with open(path, "ab") as f:
                f.write(data)
            with open(path.with_suffix(".jsonl"), "a") as f:
                f.write(json.dumps(dict(side, row=rows), default=str, sort_keys=True) + "\n")
            rows += 1
            if rows >= self.rows_per_file:
                self._open.pop(key, None)
                self._close(path)
            else:
                self._open[key] = (path, rows)
        return True

    def _close(self, path: Path) -> None:
        for suffix in (".jsonl", ".csv"):  # the CSV last: a closed CSV always has its sidecar
            source = path.with_suffix(suffix)
            if source.exists():
                source.replace(self.folder / "closed" / source.name)

    def maybe_upload(self) -> None:
        if self._clock() - self._last_upload >= self.upload_seconds:
            self.upload()

    def upload(self, force: bool = False) -> int:
        """Close the open files and upload every closed one; returns how many went."""
        with self._lock:
            self._last_upload = self._clock()
            for path, _ in self._open.values():
                self._close(path)
            self._open.clear()
            if self.uploader is None:
                return 0
            sent = 0
            for csv_path in sorted((self.folder / "closed").glob("*.csv")):
                model = csv_path.name.split("-", 1)[0]
                for path in (csv_path.with_suffix(".jsonl"), csv_path):
                    if not path.exists():
                        continue
                    try:
                        self.uploader.upload(str(path), f"model={model}/{path.name}")
                    except Exception:  # noqa: BLE001 - kept for the next round
                        self.failures += 1
                        return sent
                    self.uploaded.append(path.name)
                    path.unlink()
                sent += 1
            return sent


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)[:64] or "unknown"


class FolderUploader:
    """Uploads into a local folder (local mode, and devices that sync a folder themselves)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def upload(self, path: str, key: str) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)


class S3Uploader:
    """Uploads to ``s3://bucket/prefix/<key>`` with awscrt (a device prerequisite already:
    the Greengrass IPC client needs it), signed with the default credential chain, which
    on a core device reads the token exchange service's credentials
    (``AWS_CONTAINER_CREDENTIALS_FULL_URI``: the component depends on
    ``aws.greengrass.TokenExchangeService``). ``endpoint`` (``host:port``, plain HTTP, path-
    style) is for tests against a local S3."""

    def __init__(self, bucket: str, prefix: str = "", *, region: Optional[str] = None,
                 endpoint: Optional[str] = None, timeout: float = 120.0) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION") or "us-east-1"
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = None

    def _make_client(self) -> Any:
        from awscrt.auth import AwsCredentialsProvider
        from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
        from awscrt.s3 import S3Client, S3RequestTlsMode

        loop = EventLoopGroup()
        bootstrap = ClientBootstrap(loop, DefaultHostResolver(loop))
        return S3Client(bootstrap=bootstrap, region=self.region,
                        credential_provider=AwsCredentialsProvider.new_default_chain(bootstrap),
                        tls_mode=S3RequestTlsMode.DISABLED if self.endpoint else None)

    def upload(self, path: str, key: str) -> None:
        from urllib.parse import quote

        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType

        if self._client is None:
            self._client = self._make_client()
        full = f"{self.prefix}/{key}" if self.prefix else key
        if self.endpoint:
            host, target = self.endpoint, f"/{self.bucket}/{quote(full)}"
        else:
            host, target = f"{self.bucket}.s3.{self.region}.amazonaws.com", f"/{quote(full)}"
        headers = HttpHeaders([("Host", host), ("Content-Length", str(os.path.getsize(path))),
                               ("Content-Type", "text/csv" if path.endswith(".csv")
                                else "application/x-ndjson")])
        status: Dict[str, Any] = {}

        def on_headers(status_code: int, headers: Any, **kwargs: Any) -> None:
            status["code"] = status_code

        request = self._client.make_request(
            type=S3RequestType.PUT_OBJECT, request=HttpRequest("PUT", target, headers),
            send_filepath=path, on_headers=on_headers)
        request.finished_future.result(self.timeout)
        if status.get("code", 200) >= 300:
            raise OSError(f"upload of {path} to s3://{self.bucket}/{full} answered "
                          f"HTTP {status.get('code')}")


def make_uploader(destination: str) -> Any:
    """``s3://bucket/prefix`` -> :class:`S3Uploader`; a folder -> :class:`FolderUploader`."""
    if destination.startswith("s3://"):
        bucket, _, prefix = destination[5:].partition("/")
        return S3Uploader(bucket, prefix)
    return FolderUploader(destination)


def label_captures(source: str, labels: Mapping[str, Any], dest: str) -> Dict[str, int]:
    """Fill the label column of captured CSVs from ``labels`` (request id -> label).

    Reads every ``*.csv`` under ``source`` with its ``.jsonl`` sidecar and writes the rows
    whose request has a label to ``dest/<same name>.csv``: a training channel
    (``training/train.py``'s layout). Rows without a label are left out. Returns counts.
    """
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"files": 0, "rows": 0, "labelled": 0}
    for path in sorted(Path(source).rglob("*.csv")):
        sidecar = path.with_suffix(".jsonl")
        if not sidecar.exists():
            raise FileNotFoundError(f"captured file {path} has no sidecar {sidecar.name}: the "
                                    f"request ids of its rows are unknown")
        meta = [json.loads(line) for line in sidecar.read_text().splitlines() if line.strip()]
        rows = list(csv.reader(path.read_text().splitlines()))
        if len(meta) != len(rows):
            raise ValueError(f"captured file {path} has {len(rows)} rows and its sidecar "
                             f"{len(meta)}: they must match one to one")
        kept = []
        for row, info in zip(rows, meta):
            label = labels.get(str(info.get("request_id")))
            if label is not None:
                kept.append([str(label)] + row[1:])
        counts["files"] += 1
        counts["rows"] += len(rows)
        counts["labelled"] += len(kept)
        if kept:
            with open(out / path.name, "w", newline="") as f:
                csv.writer(f).writerows(kept)
    return counts
