"""On-device inference: requests from a local topic in, results to IoT Core out.

One file, two ways to run on a Greengrass V2 core device:

- as a **process component** (what ``neo_edge_runtime.compile.recipe.inference_recipe`` writes):
  ``python3 -u edge_inference.py`` runs :func:`main`, which subscribes to the input topic over
  Greengrass IPC, queues requests and serves them from one worker thread until SIGTERM;
- as a **long-lived (pinned) Lambda component**: :func:`handler` serves one event per call.

Both load the model through ``neo_edge_runtime.ModelStore`` (the current and previous
version on disk; a new version becomes current only after it loaded and passed a smoke
inference), so a model that fails to load leaves the old one serving.

Requests
--------
A message on the input topic is one of:

- JSON with a tensor: ``{"request_id": "r-1", "tensor": {"b64": ..., "dtype": "float32",
  "shape": [1, 64]}}``, or several inputs as ``"inputs": {"<name>": {"b64", "dtype",
  "shape"}}``; a tensor without the batch axis gets one;
- JSON with numbers: ``{"data": [[0.1, 0.2, ...]]}`` (cast to the input's dtype);
- JSON with an image: ``{"image": "<base64 of a PNG/PGM/PPM (or JPEG...) file>"}``;
- raw binary: an image file (recognised by its magic bytes) or the raw bytes of the single
  input tensor in its dtype and shape.

Images are decoded with Pillow when it is installed (PNG, JPEG, GIF, WebP, BMP, PGM/PPM: the
formats recognised by their magic bytes; Pillow's other readers are not offered to requests)
and otherwise with
the built-in numpy decoders for PNG (8/16-bit, non-interlaced, all colour types) and binary
PGM/PPM, which need nothing but numpy and zlib: the device bundle stays small. Then they are
resized (bilinear), scaled, normalised and laid out (NCHW or NHWC) as the model's manifest
metadata ``preprocess`` says, overridden by ``$NEO_EDGE_PREPROCESS``::

    {"input": "input", "layout": "NCHW", "size": [224, 224], "color": "RGB",
     "scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

Results
-------
Published with QoS 1 to ``$NEO_EDGE_RESULTS_TOPIC`` (IoT Core, through the nucleus, which
spools them while offline) as JSON: ``request_id``, ``device`` (the thing name),
``model_name``, ``model_version``, ``latency_ms``, ``queue_ms``, ``batch_size``,
``timestamp``, ``task`` and, by task (metadata ``task``, or ``$NEO_EDGE_TASK``):

- ``classification``: ``labels`` and ``scores`` of the top ``$NEO_EDGE_TOP_K`` classes
  (softmax applied when the output is not already a distribution), ``confidence``;
- ``regression``: ``value`` (the output, flattened);
- ``anomaly``: ``anomaly_score`` and ``anomaly`` (score at or above metadata
  ``anomaly_threshold``, when the manifest gives one).

A request that cannot be served (not JSON, no tensor, undecodable image, wrong shape or
dtype, over ``$NEO_EDGE_MAX_PAYLOAD_BYTES``) gives ``{"request_id", "device", "model_name",
"model_version", "timestamp", "error": {"type", "message"}}`` on ``$NEO_EDGE_ERRORS_TOPIC``
and a log line; nothing a request contains stops the function, and every valid request is
answered. When requests arrive faster than they are served, the worker takes up to
``$NEO_EDGE_MAX_BATCH`` at a time and, when the model's batch axis is larger than 1, runs
them through the model together; one that arrives while ``$NEO_EDGE_MAX_QUEUE`` wait is
answered ``Busy``, and one not run within ``$NEO_EDGE_REQUEST_TIMEOUT`` of its arrival is
answered ``Timeout`` (error types: ``PayloadError``, ``Busy``, ``Timeout``, and the model's
own, e.g. ``InputError``).

Environment variables
---------------------
NEO_EDGE_MODEL_DIR
    Required. The artifact folder of the model to serve (``compile_model`` output).
NEO_EDGE_STORE_DIR
    Optional. Where ``ModelStore`` keeps installed versions. Default: ``model-store`` next
    to the model folder (the component's work folder, which survives version updates).
NEO_EDGE_INPUT_TOPIC
    Required in process mode. The local publish/subscribe topic of requests.
NEO_EDGE_RESULTS_TOPIC, NEO_EDGE_ERRORS_TOPIC
    Optional. Default: ``neo-edge/<thing name>/results`` and ``.../errors``.
NEO_EDGE_THREADS
    Optional. TVM threads; ``0`` lets the runtime choose. Default: ``0``.
NEO_EDGE_MAX_PAYLOAD_BYTES
    Optional. Larger requests are refused. Default: 4194304 (4 MiB).
NEO_EDGE_MAX_BATCH
    Optional. Requests taken from the queue at once. Default: ``8``.
NEO_EDGE_MAX_QUEUE
    Optional. Requests waiting at most; past it a request is answered at once with a
    ``Busy`` error. Default: ``256``.
NEO_EDGE_MAX_IMAGE_PIXELS
    Optional. The most pixels an image may declare, checked in its header before it is
    decoded. Default: 16 times the model's image input, at least 1048576 (1 MP). It also
    caps decompression: a PNG's pixel data is inflated in a stream that stops at the size
    its (budgeted) header declares, and the compressed chunks that carry no pixels (text,
    ICC profiles) are dropped unread.
NEO_EDGE_REQUEST_TIMEOUT
    Optional. Seconds a request may take from its arrival until it runs, a number > 0.
    A request that waited longer in the queue, or whose decoding ran past it, is not run
    late: it is answered at once with a ``Timeout`` error under its own request id. The
    model call itself is not interrupted. Default: ``30``.
NEO_EDGE_TOP_K
    Optional. Classes reported per classification. Default: ``5``.
NEO_EDGE_TASK, NEO_EDGE_PREPROCESS
    Optional. Override the manifest metadata's ``task`` and ``preprocess`` (JSON object).
NEO_EDGE_RELOAD_CHECK_SECONDS
    Optional. How often the model folder is checked for a new version. Default: ``10``.
NEO_EDGE_MODEL_ROOTS
    Optional, folders separated by ``:``. A ``modelPath`` from the configuration must lie
    in one of them. Default: the folder holding ``$NEO_EDGE_MODEL_DIR`` (the component's
    work folder).
NEO_EDGE_SIGNING_PUBLIC_KEY
    Optional (configuration ``signingPublicKey``). The public key, PEM or the base64 of its
    DER, that each model's ``manifest.json.sig`` must verify with before the model is
    loaded. Default: none (the files' sha256 are checked, not who made them; logged).
NEO_EDGE_ALLOW_UNSIGNED
    Optional (configuration ``allowUnsigned``), ``true`` or ``false``: serve models that
    have no signature (a signed one must still verify). Default: ``false`` when a key is
    set, ``true`` when not; ``false`` without a key is a configuration error.
NEO_EDGE_SUMMARY_TOPIC
    Optional. Where summaries go. Default: ``neo-edge/<thing name>/summary``.
NEO_EDGE_SUMMARY_SECONDS, NEO_EDGE_PUBLISH_RESULTS, NEO_EDGE_SAMPLE_RATE, NEO_EDGE_LOW_CONFIDENCE,
NEO_EDGE_RESULTS_BATCH_SECONDS, NEO_EDGE_CAPTURE, NEO_EDGE_CAPTURE_RATE,
NEO_EDGE_CAPTURE_DESTINATION, NEO_EDGE_CAPTURE_MAX_MB, NEO_EDGE_CAPTURE_UPLOAD_SECONDS
    Optional. Summaries, which results are published and how they are batched, and the
    capture of inputs for retraining: ``neo_edge_runtime.telemetry.TelemetryConfig``
    (configuration ``summaryIntervalSeconds``, ``publishResults``, ...). Default: its
    defaults. Without them (a ``Settings`` made in code), each result is published at once
    and no summary is made.
NEO_EDGE_CAPTURE_DIR
    Optional. The capture spool. Default: ``capture`` next to the model folder.
NEO_EDGE_SHADOW_SHARE, NEO_EDGE_SHADOW_REQUESTS, NEO_EDGE_SHADOW_MINUTES, ...
    Optional. Health-gated rollout: a new model version runs in shadow beside the current
    one, then is promoted or rejected, and watched after a promotion
    (``neo_edge_runtime.rollout.RolloutConfig``; configuration ``shadowShare``, ...,
    ``rolloutId``). Default: its defaults (``shadowShare`` 0: no shadow, a new version
    serves at once). Decisions go to ``$NEO_EDGE_ROLLOUT_TOPIC`` (default
    ``neo-edge/<thing name>/rollout``).
AWS_IOT_THING_NAME
    Set by Greengrass: the device name in every result.

Component configuration (process mode): an update of ``modelPath`` (or ``threadCount``)
reloads the model from that path through the store, when the path lies in one of the
model folders (``$NEO_EDGE_MODEL_ROOTS``): a configuration cannot make the device load a
library from anywhere else.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import os
import queue
import re
import signal
import struct
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

try:  # Powertools when the bundle carries it (the Lambda flavour); stdlib logging otherwise.
    from aws_lambda_powertools import Logger

    logger = Logger(service="edge_inference")
except ImportError:  # pragma: no cover - exercised on devices without Powertools
    import logging

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logger = logging.getLogger("edge_inference")  # type: ignore[assignment]

__all__ = ["ConfigurationError", "InferenceService", "IpcPublisher", "PayloadError", "Request",
           "RequestTimeout", "Settings", "decode_image", "handler", "main"]

DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
#: Seconds from a request's arrival until it must run (``NEO_EDGE_REQUEST_TIMEOUT``): long
#: enough for a full queue of a slow model on a small device to drain in normal operation,
#: short enough that a result still means something when it arrives.
DEFAULT_REQUEST_TIMEOUT = 30.0
#: The smallest pixel budget of an image request (see ``NEO_EDGE_MAX_IMAGE_PIXELS``).
MIN_IMAGE_PIXELS = 1 << 20
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QOS_AT_LEAST_ONCE = "1"  # awsiot.greengrasscoreipc.model.QOS.AT_LEAST_ONCE


class ConfigurationError(RuntimeError):
    """An environment variable the function needs is missing or malformed."""


class PayloadError(ValueError):
    """A request that cannot be served: the message names what is wrong with it."""


class RequestTimeout(RuntimeError):
    """A request that ran out of its time budget (``NEO_EDGE_REQUEST_TIMEOUT``) before it
    was run; answered as a ``Timeout`` error."""


# ---------------------------------------------------------------------------------------
# Settings


def _int_env(env: Mapping[str, str], name: str, default: int, low: int) -> int:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise ConfigurationError(f"environment variable {name} must be an integer >= {low}; "
                                 f"got {raw!r}") from None
    if value < low:
        raise ConfigurationError(f"environment variable {name} must be an integer >= {low}; "
                                 f"got {raw!r}")
    return value


def _seconds_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"environment variable {name} must be a number of seconds "
                                 f"> 0; got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the function reads from its environment (see the module docstring)."""

    model_dir: str
    store_dir: str
    input_topic: Optional[str] = None
    results_topic: str = "neo-edge/unknown/results"
    errors_topic: str = "neo-edge/unknown/errors"
    device: str = "unknown"
    num_threads: Optional[int] = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_batch: int = 8
    max_queue: int = 256
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_image_pixels: Optional[int] = None
    top_k: int = 5
    task: Optional[str] = None
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    reload_check_seconds: float = 10.0
    model_roots: tuple = ()
    signing_public_key: Optional[str] = None
    allow_unsigned: bool = True
    #: ``neo_edge_runtime.telemetry.TelemetryConfig``; None: every result at once, no summaries.
    telemetry: Any = None
    summary_topic: str = "neo-edge/unknown/summary"
    capture_dir: Optional[str] = None
    #: ``neo_edge_runtime.rollout.RolloutConfig``; None: no shadow trials.
    rollout: Any = None
    rollout_topic: str = "neo-edge/unknown/rollout"

    @property
    def allowed_model_roots(self) -> tuple:
        """Where a configured ``modelPath`` may point: the setting, else the folder holding
        ``model_dir``."""
        return self.model_roots or (str(Path(self.model_dir).resolve().parent),)

    @classmethod
    def from_environment(cls, env: Optional[Mapping[str, str]] = None) -> Settings:
        env = os.environ if env is None else env
        model_dir = str(env.get("NEO_EDGE_MODEL_DIR", "")).strip()
        if not model_dir:
            raise ConfigurationError("environment variable NEO_EDGE_MODEL_DIR is not set; "
                                     "edge_inference needs the model's artifact folder")
        device = str(env.get("AWS_IOT_THING_NAME", "")).strip() or "unknown"
        preprocess_raw = str(env.get("NEO_EDGE_PREPROCESS", "")).strip()
        try:
            preprocess = json.loads(preprocess_raw) if preprocess_raw else {}
        except json.JSONDecodeError:
            preprocess = None
        if not isinstance(preprocess, dict):
            raise ConfigurationError("environment variable NEO_EDGE_PREPROCESS must be a JSON "
                                     f"object; got {preprocess_raw!r}")
        task = str(env.get("NEO_EDGE_TASK", "")).strip() or None
        if task not in (None, "classification", "regression", "anomaly"):
            raise ConfigurationError("environment variable NEO_EDGE_TASK must be one of "
                                     f"classification, regression, anomaly; got {task!r}")
        threads = _int_env(env, "NEO_EDGE_THREADS", 0, 0)
        for name in ("NEO_EDGE_INPUT_TOPIC", "NEO_EDGE_RESULTS_TOPIC", "NEO_EDGE_ERRORS_TOPIC"):
            topic = str(env.get(name, ""))
            if len(topic.encode()) > 256 or any(c in topic for c in "\0\n\r") or (
                    name != "NEO_EDGE_INPUT_TOPIC" and any(c in topic for c in "#+")):
                raise ConfigurationError(f"environment variable {name} must be an MQTT topic of "
                                         f"at most 256 bytes{'' if name == 'NEO_EDGE_INPUT_TOPIC' else ' without wildcards'}; "
                                         f"got {topic!r}")
        return cls(
            model_dir=model_dir,
            store_dir=(str(env.get("NEO_EDGE_STORE_DIR", "")).strip()
                       or str(Path(model_dir).resolve().parent / "model-store")),
            input_topic=str(env.get("NEO_EDGE_INPUT_TOPIC", "")).strip() or None,
            results_topic=(str(env.get("NEO_EDGE_RESULTS_TOPIC", "")).strip()
                           or f"neo-edge/{device}/results"),
            errors_topic=(str(env.get("NEO_EDGE_ERRORS_TOPIC", "")).strip()
                          or f"neo-edge/{device}/errors"),
            device=device,
            num_threads=threads or None,
            max_payload_bytes=_int_env(env, "NEO_EDGE_MAX_PAYLOAD_BYTES",
                                       DEFAULT_MAX_PAYLOAD_BYTES, 1),
            max_batch=_int_env(env, "NEO_EDGE_MAX_BATCH", 8, 1),
            max_queue=_int_env(env, "NEO_EDGE_MAX_QUEUE", 256, 1),
            request_timeout=_seconds_env(env, "NEO_EDGE_REQUEST_TIMEOUT",
                                         DEFAULT_REQUEST_TIMEOUT),
            max_image_pixels=_int_env(env, "NEO_EDGE_MAX_IMAGE_PIXELS", 0, 0) or None,
            top_k=_int_env(env, "NEO_EDGE_TOP_K", 5, 1),
            task=task,
            preprocess=preprocess,
            reload_check_seconds=float(_int_env(env, "NEO_EDGE_RELOAD_CHECK_SECONDS", 10, 0)),
            **_signing_settings(env),
            **_telemetry_settings(env, device, model_dir),
            **_rollout_settings(env, device),
            model_roots=tuple(p for p in str(env.get("NEO_EDGE_MODEL_ROOTS", "")).split(":")
                              if p.strip()),
        )


def _rollout_settings(env: Mapping[str, str], device: str) -> dict[str, Any]:
    """``rollout`` and ``rollout_topic`` from the environment, checked."""
    from neo_edge_runtime.rollout import RolloutConfig, RolloutConfigError

    try:
        config = RolloutConfig.from_environment(env)
    except RolloutConfigError as exc:
        raise ConfigurationError(str(exc)) from None
    topic = str(env.get("NEO_EDGE_ROLLOUT_TOPIC", "")).strip() or f"neo-edge/{device}/rollout"
    if len(topic.encode()) > 256 or any(c in topic for c in "#+\0\n\r"):
        raise ConfigurationError(f"environment variable NEO_EDGE_ROLLOUT_TOPIC must be an MQTT "
                                 f"topic of at most 256 bytes without wildcards; got {topic!r}")
    return {"rollout": config, "rollout_topic": topic}


def _telemetry_settings(env: Mapping[str, str], device: str, model_dir: str) -> dict[str, Any]:
    """``telemetry``, ``summary_topic`` and ``capture_dir`` from the environment, checked."""
    from neo_edge_runtime.telemetry import TelemetryConfig, TelemetryConfigError

    try:
        config = TelemetryConfig.from_environment(env)
    except TelemetryConfigError as exc:
        raise ConfigurationError(str(exc)) from None
    topic = str(env.get("NEO_EDGE_SUMMARY_TOPIC", "")).strip() or f"neo-edge/{device}/summary"
    if len(topic.encode()) > 256 or any(c in topic for c in "#+\0\n\r"):
        raise ConfigurationError(f"environment variable NEO_EDGE_SUMMARY_TOPIC must be an MQTT "
                                 f"topic of at most 256 bytes without wildcards; got {topic!r}")
    capture = (str(env.get("NEO_EDGE_CAPTURE_DIR", "")).strip()
               or str(Path(model_dir).resolve().parent / "capture"))
    return {"telemetry": config, "summary_topic": topic, "capture_dir": capture}


def _signing_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """``signing_public_key`` and ``allow_unsigned`` from the environment, checked."""
    key = str(env.get("NEO_EDGE_SIGNING_PUBLIC_KEY", "")).strip() or None
    if key is not None:
        from neo_edge_runtime.errors import SignatureError
        from neo_edge_runtime.signature import parse_public_key

        try:
            parse_public_key(key)
        except SignatureError as exc:
            raise ConfigurationError(f"environment variable NEO_EDGE_SIGNING_PUBLIC_KEY "
                                     f"(configuration signingPublicKey): {exc}") from None
    given = str(env.get("NEO_EDGE_ALLOW_UNSIGNED", "")).strip()
    raw = given.lower()
    if raw not in ("", "true", "false"):
        raise ConfigurationError(f"environment variable NEO_EDGE_ALLOW_UNSIGNED (configuration "
                                 f"allowUnsigned) must be true or false; got {given!r}")
    allow = key is None if not raw else raw == "true"
    if not allow and key is None:
        raise ConfigurationError("environment variable NEO_EDGE_ALLOW_UNSIGNED (configuration "
                                 "allowUnsigned) is false but no signing public key is set "
                                 "(NEO_EDGE_SIGNING_PUBLIC_KEY, configuration "
                                 "signingPublicKey): set one, or allow unsigned models")
    return {"signing_public_key": key, "allow_unsigned": allow}


# ---------------------------------------------------------------------------------------
# Image decoding: Pillow when installed, else PNG and PGM/PPM with numpy + zlib only


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image by the size its header declares, before decoding it."""
    if width < 1 or height < 1 or width * height > max_pixels:
        raise PayloadError(f"undecodable image: {width}x{height} pixels is over the budget of "
                           f"{max_pixels} pixels (NEO_EDGE_MAX_IMAGE_PIXELS)")


def _check_deadline(deadline: Optional[float], clock: Callable[[], float] = time.monotonic
                    ) -> None:
    if deadline is not None and clock() > deadline:
        raise RequestTimeout("decoding ran past the request's time budget "
                             "(NEO_EDGE_REQUEST_TIMEOUT); not run")


def _decode_png(data: bytes, max_pixels: int = MIN_IMAGE_PIXELS,
                deadline: Optional[float] = None,
                clock: Callable[[], float] = time.monotonic) -> np.ndarray:
    pos, idat, header, palette = 8, [], None, None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if len(chunk) != length:
            raise PayloadError("undecodable image: the PNG is truncated")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"PLTE":
            palette = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise PayloadError("undecodable image: the PNG has no IHDR or IDAT chunk")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None or depth not in (8, 16) or interlace or (colour == 3 and depth != 8):
        raise PayloadError(f"undecodable image: PNG colour type {colour}, bit depth {depth}, "
                           f"interlace {interlace} needs Pillow on the device")
    _check_pixels(width, height, max_pixels)
    bpp = channels * depth // 8
    stride = width * bpp
    expected = height * (stride + 1)
    # Inflated as a stream that stops one byte past what the header declares (a header
    # already within the pixel budget): a small file may inflate to gigabytes.
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise PayloadError(f"undecodable image: PNG data is corrupt ({exc})") from None
    if len(raw) > expected:
        raise PayloadError(f"undecodable image: PNG data inflates past {expected} bytes, the "
                           f"size its {width}x{height} header declares (the most it may "
                           f"inflate to)")
    if len(raw) < expected:
        raise PayloadError(f"undecodable image: PNG data inflates to {len(raw)} bytes, short of "
                           f"the {expected} bytes its {width}x{height} header declares")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        if y % 16 == 0:  # the Average and Paeth rows run in Python: about 1 s a megapixel
            _check_deadline(deadline, clock)
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 2:
            cur = line + prev
        elif kind == 1:  # Sub: a running sum per byte lane, modulo 256
            lanes = np.zeros(width * bpp, dtype=np.uint8)
            lanes[:] = line
            cur = np.cumsum(lanes.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind in (3, 4):
            cur = bytearray(stride)
            up = prev.tolist()
            src = line.tolist()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                c = up[i - bpp] if i >= bpp else 0
                pred = (a + up[i]) >> 1 if kind == 3 else _paeth(a, up[i], c)
                cur[i] = (src[i] + pred) & 0xFF
            cur = np.frombuffer(bytes(cur), dtype=np.uint8)
        else:
            raise PayloadError(f"undecodable image: PNG filter type {kind} is not defined")
        out[y] = cur
        prev = out[y]
    if depth == 16:
        image = out.view(">u2").reshape(height, width, channels).astype(np.float32) / 257.0
    else:
        image = out.reshape(height, width, channels)
    if colour == 3:
        if palette is None:
            raise PayloadError("undecodable image: palette PNG without a PLTE chunk")
        image = palette[np.minimum(image[..., 0], len(palette) - 1)]
    return image


def _decode_pnm(data: bytes, max_pixels: int = MIN_IMAGE_PIXELS) -> np.ndarray:
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            while pos < len(data) and data[pos:pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise PayloadError("undecodable image: the PGM/PPM header is truncated")
        tokens.append(data[start:pos])
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError:
        raise PayloadError("undecodable image: the PGM/PPM header is not numeric") from None
    _check_pixels(width, height, max_pixels)
    if not 0 < maxval < 65536:
        raise PayloadError(f"undecodable image: PGM/PPM maximum value must be 1 to 65535; "
                           f"got {maxval}")
    channels = 1 if data[:2] == b"P5" else 3
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
    body = data[pos + 1:]
    need = width * height * channels * dtype.itemsize
    if width <= 0 or height <= 0 or len(body) < need:
        raise PayloadError(f"undecodable image: PGM/PPM of {width}x{height} needs {need} bytes "
                           f"of pixels; got {len(body)}")
    image = np.frombuffer(body[:need], dtype=dtype).reshape(height, width, channels)
    return image if maxval == 255 else (image.astype(np.float32) * (255.0 / maxval))


def _is_image(data: bytes) -> bool:
    return (data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] in (b"P5", b"P6")
            or data[:3] == b"\xff\xd8\xff" or data[:4] in (b"GIF8", b"RIFF") or data[:2] == b"BM")


#: The Pillow readers a request may reach: the formats :func:`_is_image` recognises.
PILLOW_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "PPM")
#: The PNG chunks handed to Pillow; the others (zTXt, iTXt and iCCP are compressed: Pillow
#: would inflate up to 64 MB of them per image) carry nothing the model sees.
_PNG_PIXEL_CHUNKS = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")


def _png_pixel_chunks(data: bytes) -> bytes:
    """``data`` (a PNG file) with only the chunks that make its pixels; the rest is dropped
    unread (a truncated chunk is kept for the decoder to refuse)."""
    parts, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 12 + length
        if data[pos + 4:pos + 8] in _PNG_PIXEL_CHUNKS or end > len(data):
            parts.append(data[pos:end])
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos = end
    return b"".join(parts)


def decode_image(data: bytes, max_pixels: int = MIN_IMAGE_PIXELS,
                 deadline: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> np.ndarray:
    """Decode an image file to an ``(H, W, C)`` array (uint8, or float32 for deep images).

    An image whose header declares more than ``max_pixels`` pixels is refused before it
    is decoded; what a PNG inflates to is capped at the size its header declares. The
    built-in PNG decoder stops at ``deadline`` (a ``clock()`` time).

    Raises
    ------
    PayloadError
        Not an image, a corrupt one, or a format the device cannot decode.
    RequestTimeout
        Decoding ran past ``deadline``.
    """
    try:
        from PIL import Image  # noqa: PLC0415 - optional, heavier
    except ImportError:
        Image = None  # noqa: N806
    if Image is not None:
        import io

        if data[:8] == b"\x89PNG\r\n\x1a\n":
            data = _png_pixel_chunks(data)
        try:
            with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as img:
                _check_pixels(*img.size, max_pixels)
                img.load()
                if img.mode not in ("L", "RGB"):
                    img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
                array = np.asarray(img)
        except PayloadError:
            raise
        except Exception as exc:  # Pillow raises many types for a bad file
            raise PayloadError(f"undecodable image: {exc}") from None
        return array[..., None] if array.ndim == 2 else array
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _decode_png(data, max_pixels, deadline, clock)
    if data[:2] in (b"P5", b"P6"):
        return _decode_pnm(data, max_pixels)
    kind = "JPEG" if data[:3] == b"\xff\xd8\xff" else "this format"
    raise PayloadError(f"undecodable image: {kind} needs Pillow on the device (built in: PNG, "
                       f"binary PGM/PPM)")


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


# ---------------------------------------------------------------------------------------
# Requests


@dataclass
class Request:
    """One decoded request, ready for the model."""

    request_id: str
    inputs: dict[str, np.ndarray]
    received: float = field(default_factory=time.monotonic)


def _single_input(model: Any) -> dict:
    if len(model.inputs) != 1:
        names = ", ".join(i["name"] for i in model.inputs)
        raise PayloadError(f"model {model.name!r} has {len(model.inputs)} inputs ({names}); "
                           "send them as 'inputs': {name: tensor}")
    return model.inputs[0]


def _spec(model: Any, name: str) -> dict:
    for spec in model.inputs:
        if spec["name"] == name:
            return spec
    raise PayloadError(f"unknown input {name!r}; the model's inputs are "
                       f"{', '.join(i['name'] for i in model.inputs)}")


def _fit(array: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Match a tensor to an input: add a missing batch axis, cast within the same kind.

    A tensor of one row for a model whose batch axis is larger is kept as one row: the
    service stacks several such requests into one batch.
    """
    shape = list(spec["shape"])
    if shape and list(array.shape) == shape[1:]:
        array = array[None, ...]
    if shape and list(array.shape) == [1] + shape[1:]:
        pass
    elif list(array.shape) != shape:
        raise PayloadError(f"input {spec['name']!r} must have shape {shape}; "
                           f"got {list(array.shape)}")
    dtype = np.dtype(spec["dtype"])
    if array.dtype != dtype:
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise PayloadError(f"input {spec['name']!r} must be {dtype}; got {array.dtype}")
        array = array.astype(dtype)
    return array


def _tensor(value: Any, spec: Mapping[str, Any]) -> np.ndarray:
    if not isinstance(value, Mapping):
        raise PayloadError(f"tensor for input {spec['name']!r} must be an object with b64, dtype "
                           f"and shape; got {type(value).__name__}")
    try:
        raw = base64.b64decode(value.get("b64", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise PayloadError(f"tensor for input {spec['name']!r}: b64 is not valid base64") from None
    try:
        dtype = np.dtype(value.get("dtype", spec["dtype"]))
        shape = [int(d) for d in value.get("shape", spec["shape"])]
    except (TypeError, ValueError):
        raise PayloadError(f"tensor for input {spec['name']!r}: dtype {value.get('dtype')!r} or "
                           f"shape {value.get('shape')!r} is not valid") from None
    if dtype.kind not in "biuf" or any(d < 0 for d in shape):
        raise PayloadError(f"tensor for input {spec['name']!r}: dtype {dtype} / shape {shape} "
                           "is not a numeric tensor")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise PayloadError(f"tensor for input {spec['name']!r}: {len(raw)} bytes do not hold "
                           f"shape {shape} of {dtype}")
    return _fit(np.frombuffer(raw, dtype=dtype).reshape(shape), spec)


def _preprocess_image(image: np.ndarray, spec: Mapping[str, Any],
                      options: Mapping[str, Any]) -> np.ndarray:
    shape = list(spec["shape"])
    if len(shape) != 4:
        raise PayloadError(f"input {spec['name']!r} of shape {shape} does not take an image")
    layout = str(options.get("layout") or ("NCHW" if shape[1] in (1, 3, 4) else "NHWC")).upper()
    if layout not in ("NCHW", "NHWC"):
        raise PayloadError(f"preprocess layout must be NCHW or NHWC; got {layout!r}")
    channels = shape[1] if layout == "NCHW" else shape[3]
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if options.get("size"):
        height, width = (int(v) for v in options["size"])
    if image.shape[2] == 4:  # drop alpha
        image = image[..., :3]
    if image.shape[2] == 2:  # grey + alpha
        image = image[..., :1]
    if channels == 1 and image.shape[2] == 3:
        image = (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    elif channels == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if str(options.get("color", "RGB")).upper() == "BGR" and channels == 3:
        image = image[..., ::-1]
    image = _resize_bilinear(image, height, width)
    image = image * float(options.get("scale", 1.0 / 255.0))
    image = (image - np.asarray(options.get("mean", 0.0), np.float32)) / \
        np.asarray(options.get("std", 1.0), np.float32)
    if layout == "NCHW":
        image = image.transpose(2, 0, 1)
    array = image[None, ...]
    dtype = np.dtype(spec["dtype"])
    if dtype.kind in "iu":
        array = np.clip(np.rint(array), np.iinfo(dtype).min, np.iinfo(dtype).max)
    return _fit(array.astype(dtype), spec)


# ---------------------------------------------------------------------------------------
# Publishing


class Publisher(Protocol):
    def publish(self, topic: str, message: Mapping[str, Any]) -> None: ...


class IpcPublisher:
    """Publishes to IoT Core through Greengrass IPC (QoS 1), retrying transient failures.

    ``client`` is an ``awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2`` (created
    on first use when not given) or anything with its ``publish_to_iot_core`` method.
    """

    def __init__(self, client: Any = None, *, attempts: int = 3, backoff: float = 0.2):
        self._client = client
        self._attempts = attempts
        self._backoff = backoff
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

                self._client = GreengrassCoreIPCClientV2()
            return self._client

    def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        for attempt in range(1, self._attempts + 1):
            try:
                self.client.publish_to_iot_core(topic_name=topic, qos=_qos(), payload=payload)
                return
            except Exception:
                if attempt == self._attempts:
                    raise
                time.sleep(self._backoff * 2 ** (attempt - 1))


def _qos() -> Any:
    try:
        from awsiot.greengrasscoreipc.model import QOS

        return QOS.AT_LEAST_ONCE
    except ImportError:
        return _QOS_AT_LEAST_ONCE


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / np.sum(e)


# ---------------------------------------------------------------------------------------
# The service


class InferenceService:
    """Decode, run, postprocess and publish; the same object behind both entry points.

    Parameters
    ----------
    settings:
        What the environment configured.
    publisher:
        Where results go. Default: :class:`IpcPublisher` with a lazily created IPC client.
    store:
        A ``neo_edge_runtime.ModelStore``, or anything with ``install(path)``, ``current``.
        Default: one at ``settings.store_dir``.
    clock:
        Seconds, monotonic: what arrival times and the time budget
        (``settings.request_timeout``) are measured with. Default: ``time.monotonic``.
    """

    def __init__(self, settings: Settings, *, publisher: Optional[Publisher] = None,
                 store: Any = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.publisher = publisher or IpcPublisher()
        if store is None:
            from neo_edge_runtime import ModelStore

            store = ModelStore(settings.store_dir, num_threads=settings.num_threads,
                               public_key=settings.signing_public_key,
                               allow_unsigned=settings.allow_unsigned)
            if settings.signing_public_key is None:
                logger.warning("no signing public key is configured (signingPublicKey): "
                               "models are checked against their manifest, not for who "
                               "signed it")
        self.store = store
        from neo_edge_runtime.telemetry import Telemetry, TelemetryConfig

        # No telemetry settings: each result is published at once (a batch of one).
        self.telemetry = Telemetry(
            settings.telemetry or TelemetryConfig(summary_seconds=0, batch_seconds=0),
            self.publisher.publish, device=settings.device, summary_topic=settings.summary_topic,
            capture_dir=settings.capture_dir, on_error=logger.error)
        from neo_edge_runtime.rollout import RolloutConfig, RolloutController

        self.rollout = RolloutController(
            settings.rollout or RolloutConfig(), store,
            publish=lambda message: self.publisher.publish(settings.rollout_topic, message),
            postprocess=self.postprocess, device=settings.device,
            log=lambda level, message: getattr(logger, level)(message), clock=clock)
        self._model_dir = settings.model_dir
        self._watched: Optional[tuple] = None
        self._last_check = 0.0
        self._reload_lock = threading.Lock()
        self.queue: "queue.Queue[tuple[Any, float]]" = queue.Queue(settings.max_queue)
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self.load(self._model_dir)
        if self.model is None:
            raise ConfigurationError(f"no model could be loaded from {self._model_dir!r} and the "
                                     f"store at {settings.store_dir!r} holds none")

    # -- the model -------------------------------------------------------------------

    @property
    def model(self) -> Any:
        return self.store.current

    def _stamp(self, path: str) -> Optional[tuple]:
        try:
            stat = (Path(path) / "manifest.json").stat()
        except OSError:
            return None
        return (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)

    def load(self, model_dir: str) -> bool:
        """Install the model at ``model_dir`` through the store; keep the old one on failure.

        Returns whether the model at ``model_dir`` is now the one serving.
        """
        with self._reload_lock:
            self._model_dir = model_dir
            self._watched = self._stamp(model_dir)
            before = self.model
            try:
                if self.rollout.offer(model_dir):  # on trial beside the current version
                    return False
                model = self.store.install(model_dir)
            except Exception as exc:
                logger.error(f"model at {model_dir} was not installed; "
                             f"{'the previous version keeps serving' if before else 'no model'}: "
                             f"{exc}")
                if before is not None:
                    self._publish_error(f"reload-{uuid.uuid4().hex[:12]}", "ModelUpdateError",
                                        f"model at {model_dir} was not installed, "
                                        f"{before.name} {before.version} keeps serving: {exc}")
                return False
            if before is None or model is not before:
                logger.info(f"serving model {model.name} {model.version} from {model_dir}")
            return True

    def maybe_reload(self, *, force: bool = False) -> None:
        """Reload when the model folder's manifest changed (checked every few seconds)."""
        self.rollout.tick()
        now = time.monotonic()
        if not force and now - self._last_check < self.settings.reload_check_seconds:
            return
        self._last_check = now
        stamp = self._stamp(self._model_dir)
        if stamp is not None and stamp != self._watched:
            self.load(self._model_dir)

    def on_configuration(self, configuration: Mapping[str, Any]) -> None:
        """Apply a component configuration: ``modelPath``, ``threadCount`` and the telemetry
        keys (``neo_edge_runtime.telemetry.TelemetryConfig``; a bad one is refused, logged)."""
        try:
            self.telemetry.reconfigure(configuration)
        except ValueError as exc:
            logger.error(f"telemetry configuration not applied: {exc}")
        try:
            self.rollout.reconfigure(configuration)
        except ValueError as exc:
            logger.error(f"rollout configuration not applied: {exc}")
        path = configuration.get("modelPath")
        threads = configuration.get("threadCount")
        if isinstance(threads, (int, float)) and not isinstance(threads, bool) and threads >= 0:
            self.settings = replace(self.settings, num_threads=int(threads) or None)
            if hasattr(self.store, "num_threads"):
                self.store.num_threads = self.settings.num_threads
        if not isinstance(path, str) or not path:
            return
        roots = self.settings.allowed_model_roots
        if not any(_within(path, root) for root in roots):
            logger.error(f"modelPath {path!r} refused: outside {', '.join(roots)}")
            self._publish_error(f"config-{uuid.uuid4().hex[:12]}", "ConfigurationError",
                                f"modelPath {path!r} is outside the model folders this "
                                f"component loads from ({', '.join(roots)}); not loaded")
            return
        if path != self._model_dir or self._stamp(path) != self._watched:
            self.load(path)

    # -- requests --------------------------------------------------------------------

    def decode(self, payload: Any, deadline: Optional[float] = None) -> Request:
        """Turn a message (bytes, text or parsed JSON) into a :class:`Request`.

        Raises
        ------
        PayloadError
            With ``request_id`` set as an attribute when the payload named one.
        RequestTimeout
            Decoding ran past ``deadline`` (a ``clock()`` time); ``request_id`` as above.
        """
        model = self.model
        if isinstance(payload, (bytes, bytearray, memoryview)):
            data = bytes(payload)
            self._check_size(len(data))
            if data.lstrip()[:1] in (b"{", b"["):
                try:
                    payload = json.loads(data)
                except RecursionError:
                    raise PayloadError("payload is nested too deeply") from None
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    # Raw tensor bytes may happen to start like JSON.
                    raw = self._raw_tensor(model, data)
                    if raw is None:
                        raise PayloadError(f"payload is not valid JSON: {exc}") from None
                    return raw
            elif _is_image(data):
                spec = _single_input(model)
                return Request(uuid.uuid4().hex,
                               {spec["name"]: self._image(data, spec, deadline)})
            else:
                raw = self._raw_tensor(model, data)
                if raw is None:
                    spec = _single_input(model)
                    dtype = np.dtype(spec["dtype"])
                    raise PayloadError(
                        f"raw payload of {len(data)} bytes is neither JSON, an image, nor input "
                        f"{spec['name']!r} ({math.prod(spec['shape']) * dtype.itemsize} bytes of "
                        f"{dtype} {list(spec['shape'])})")
                return raw
        elif isinstance(payload, str):
            self._check_size(len(payload.encode()))
            try:
                payload = json.loads(payload)
            except RecursionError:
                raise PayloadError("payload is nested too deeply") from None
            except json.JSONDecodeError as exc:
                raise PayloadError(f"payload is not valid JSON: {exc}") from None
        else:
            try:
                size = len(json.dumps(payload))
            except (TypeError, ValueError, RecursionError):
                raise PayloadError("payload is not JSON-serialisable") from None
            self._check_size(size)
        if not isinstance(payload, dict):
            raise PayloadError(f"a JSON request must be an object; got {type(payload).__name__}")

        request_id = payload.get("request_id")
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            raise PayloadError(f"request_id must match {_REQUEST_ID.pattern}; got {request_id!r}")
        try:
            return Request(request_id, self._inputs(payload, model, deadline))
        except (PayloadError, RequestTimeout) as exc:
            exc.request_id = request_id  # type: ignore[attr-defined]
            raise
        except (ArithmeticError, LookupError, TypeError, ValueError, MemoryError,
                RecursionError, struct.error) as exc:
            # numpy and the decoders refuse absurd shapes, numbers and headers in many ways:
            # each is this request's error, answered under its own id.
            error = PayloadError(f"unreadable request: {type(exc).__name__}: {exc}")
            error.request_id = request_id  # type: ignore[attr-defined]
            raise error from None

    @staticmethod
    def _raw_tensor(model: Any, data: bytes) -> Optional[Request]:
        """The single input's tensor when ``data`` is exactly its raw bytes, else None."""
        if len(model.inputs) != 1:
            return None
        spec = model.inputs[0]
        dtype = np.dtype(spec["dtype"])
        if len(data) != math.prod(spec["shape"]) * dtype.itemsize:
            return None
        array = np.frombuffer(data, dtype=dtype).reshape(spec["shape"])
        return Request(uuid.uuid4().hex, {spec["name"]: array})

    def _check_size(self, size: int) -> None:
        if size > self.settings.max_payload_bytes:
            raise PayloadError(f"payload of {size} bytes is over the limit of "
                               f"{self.settings.max_payload_bytes} bytes")

    def _preprocess_options(self, model: Any) -> dict[str, Any]:
        options = dict((getattr(model, "metadata", None) or model.manifest.get("metadata", {}))
                       .get("preprocess") or {})
        options.update(self.settings.preprocess)
        return options

    def _image(self, data: bytes, spec: Mapping[str, Any],
               deadline: Optional[float] = None) -> np.ndarray:
        image = decode_image(data, self._pixel_budget(spec), deadline, self.clock)
        return _preprocess_image(image, spec, self._preprocess_options(self.model))

    def _pixel_budget(self, spec: Mapping[str, Any]) -> int:
        """Pixels an image for ``spec`` may declare: the setting, else 16 times the input's
        own (its two largest dimensions), at least :data:`MIN_IMAGE_PIXELS`."""
        if self.settings.max_image_pixels:
            return self.settings.max_image_pixels
        dims = sorted(int(d) for d in spec["shape"])[-2:]
        return max(MIN_IMAGE_PIXELS, 16 * math.prod(dims))

    def _inputs(self, payload: Mapping[str, Any], model: Any,
                deadline: Optional[float] = None) -> dict[str, np.ndarray]:
        if "inputs" in payload:
            given = payload["inputs"]
            if not isinstance(given, Mapping) or not given:
                raise PayloadError("'inputs' must be an object of input name to tensor")
            specs = {name: _spec(model, name) for name in given}
            missing = [spec["name"] for spec in model.inputs if spec["name"] not in given]
            if missing:
                raise PayloadError(f"'inputs' lacks {', '.join(map(repr, missing))}: the model "
                                   f"takes {', '.join(repr(s['name']) for s in model.inputs)}")
            return {name: _tensor(value, specs[name]) for name, value in given.items()}
        if "tensor" in payload:
            spec = _single_input(model)
            return {spec["name"]: _tensor(payload["tensor"], spec)}
        if "data" in payload:
            spec = _single_input(model)
            try:
                array = np.asarray(payload["data"], dtype=np.dtype(spec["dtype"]))
            except (TypeError, ValueError, OverflowError):
                raise PayloadError(f"'data' for input {spec['name']!r} must be a (nested) list of "
                                   "numbers of one shape") from None
            return {spec["name"]: _fit(array, spec)}
        if "image" in payload:
            name = self._preprocess_options(model).get("input") or payload.get("input")
            spec = _spec(model, name) if name else _single_input(model)
            try:
                data = base64.b64decode(payload["image"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise PayloadError("'image' is not valid base64") from None
            return {spec["name"]: self._image(data, spec, deadline)}
        raise PayloadError("a JSON request needs one of 'tensor', 'inputs', 'data' or 'image'; "
                           f"got keys {sorted(payload)}")

    # -- running ---------------------------------------------------------------------

    def _task(self, model: Any) -> str:
        metadata = getattr(model, "metadata", None) or model.manifest.get("metadata", {})
        task = self.settings.task or metadata.get("task")
        if task:
            return task
        size = math.prod(model.outputs[0]["shape"]) if model.outputs else 1
        return "classification" if size > 1 else "regression"

    def postprocess(self, model: Any, outputs: Mapping[str, np.ndarray],
                    index: Optional[int] = None) -> dict[str, Any]:
        """The task's summary of one request's outputs.

        ``index`` is the request's row along the batch axis when several requests ran
        together; otherwise a leading batch axis of 1 is dropped.
        """
        metadata = getattr(model, "metadata", None) or model.manifest.get("metadata", {})
        first = np.asarray(outputs[model.outputs[0]["name"]])
        if index is not None:
            row = first[index]
        else:
            row = first[0] if first.ndim > 1 and first.shape[0] == 1 else first
        task = self._task(model)
        out: dict[str, Any] = {"task": task}
        if task == "classification":
            scores = np.asarray(row, np.float64).reshape(-1)
            total = float(np.sum(scores))
            if scores.size > 1 and not (np.all(scores >= 0) and abs(total - 1.0) < 1e-3):
                scores = _softmax(scores)
            k = min(self.settings.top_k, scores.size)
            top = np.argsort(-scores, kind="stable")[:k]
            labels = metadata.get("labels") or []
            out["labels"] = [str(labels[i]) if i < len(labels) else str(int(i)) for i in top]
            out["scores"] = [round(float(scores[i]), 6) for i in top]
            out["confidence"] = out["scores"][0] if k else None
        elif task == "anomaly":
            score = float(np.max(np.asarray(row, np.float64)))
            out["anomaly_score"] = score
            threshold = metadata.get("anomaly_threshold")
            if isinstance(threshold, (int, float)):
                out["anomaly"] = score >= threshold
        else:
            values = np.asarray(row, np.float64).reshape(-1)[:1024]
            out["value"] = [float(v) for v in values] if values.size > 1 else float(values[0])
        for key in ("scores", "value", "anomaly_score", "confidence"):
            value = out.get(key)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"model output {key} is not finite")
        return out

    def _envelope(self, request_id: str, model: Any) -> dict[str, Any]:
        return {"request_id": request_id, "device": self.settings.device,
                "model_name": getattr(model, "name", None), "model_version":
                    getattr(model, "version", None), "timestamp": _now()}

    def _publish_error(self, request_id: str, kind: str, message: str) -> dict[str, Any]:
        result = self._envelope(request_id, self.model)
        result["error"] = {"type": kind, "message": message}
        logger.warning(f"request {request_id} refused: {kind}: {message}")
        self._publish(self.settings.errors_topic, result)
        return result

    def _publish(self, topic: str, result: Mapping[str, Any],
                 inputs: Optional[Mapping[str, np.ndarray]] = None) -> None:
        """Through the telemetry: counted in the summary, published (batched) if chosen,
        its ``inputs`` captured if chosen."""
        try:
            self.telemetry.record(topic, result, inputs)
        except Exception as exc:  # the result is lost, the function is not
            logger.error(f"could not publish to {topic}: {exc!r}")

    def _run(self, model: Any, batch: list[Request]) -> list[dict[str, Any]]:
        """One result per request, in order. When the model's batch axis is larger than 1,
        requests of one row each are stacked (``axis`` at a time, zero-padded); a request
        that fills the axis itself runs alone."""
        specs = model.inputs
        axis = min((int(s["shape"][0]) for s in specs if s["shape"]), default=1)
        rows = [i for i, r in enumerate(batch) if axis > 1 and all(
            spec["shape"] and r.inputs[spec["name"]].shape[:1] == (1,) for spec in specs)]
        alone = [i for i in range(len(batch)) if i not in set(rows)]
        results: dict[int, dict[str, Any]] = {}
        for start in range(0, len(rows), axis):
            chunk = rows[start:start + axis]
            for i, result in zip(chunk, self._predict(model, [batch[i] for i in chunk],
                                                      len(batch), axis)):
                results[i] = result
        for i in alone:
            (results[i],) = self._predict(model, [batch[i]], len(batch), None)
        return [results[i] for i in range(len(batch))]

    def _predict(self, model: Any, requests: list[Request], batch_size: int,
                 axis: Optional[int]) -> list[dict[str, Any]]:
        """One model call for ``requests`` (stacked and zero-padded to ``axis`` rows if set)."""
        if axis is None:
            inputs = requests[0].inputs
        else:
            inputs = {}
            for spec in model.inputs:
                parts = [r.inputs[spec["name"]] for r in requests]
                pad = [np.zeros_like(parts[0])] * (axis - len(parts))
                inputs[spec["name"]] = np.concatenate(parts + pad, axis=0)
        start = time.perf_counter()
        try:
            outputs = model.predict(dict(inputs))
        except Exception as exc:
            if len(requests) > 1:  # one bad request must not fail the others
                return [r for req in requests
                        for r in self._predict(model, [req], batch_size, axis)]
            failed = [self._publish_error(requests[0].request_id, type(exc).__name__, str(exc))]
            self.rollout.observe(model, None, [requests[0].request_id], failed, axis, None)
            return failed
        latency = (time.perf_counter() - start) * 1000.0
        done = self.clock()
        results = []
        for index, request in enumerate(requests):
            try:
                summary = self.postprocess(model, outputs, index if axis is not None else None)
            except Exception as exc:
                results.append(self._publish_error(request.request_id, type(exc).__name__,
                                                   str(exc)))
                continue
            result = self._envelope(request.request_id, model)
            result.update(latency_ms=round(latency, 3),
                          queue_ms=round(max(0.0, (done - request.received) * 1000.0 - latency), 3),
                          batch_size=batch_size, **summary)
            self._publish(self.settings.results_topic, result, request.inputs)
            results.append(result)
        self.rollout.observe(model, inputs, [r.request_id for r in requests], results, axis,
                             latency)
        return results

    def handle(self, payloads: list[Any],
               received: Optional[list[float]] = None) -> list[dict[str, Any]]:
        """Serve a batch of raw messages: one result (or error result) per message, in order.

        ``received`` is when each message arrived (``clock()`` times; default: now). A
        message still waiting to be decoded, or decoded but not yet run, when its time
        budget (``settings.request_timeout``) is spent is answered with a ``Timeout``
        error under its own request id instead of being run late.
        """
        self.maybe_reload()
        model = self.model
        now = self.clock()
        arrived = list(received) if received is not None else [now] * len(payloads)
        decoded: list[tuple[int, Request]] = []
        results: list[Optional[dict[str, Any]]] = [None] * len(payloads)
        for i, payload in enumerate(payloads):
            deadline = arrived[i] + self.settings.request_timeout
            try:
                if self.clock() > deadline:
                    raise RequestTimeout("waiting")
                request = self.decode(payload, deadline)
                request.received = arrived[i]
                decoded.append((i, request))
            except RequestTimeout as exc:
                request_id = (getattr(exc, "request_id", None)
                              or _request_id_of(payload, self.settings.max_payload_bytes))
                results[i] = self._publish_timeout(request_id, arrived[i], "decoded")
            except PayloadError as exc:
                request_id = getattr(exc, "request_id", None) or uuid.uuid4().hex
                results[i] = self._publish_error(request_id, "PayloadError", str(exc))
            except Exception as exc:  # noqa: BLE001 - never die on input
                logger.exception("unexpected error decoding a request")
                results[i] = self._publish_error(uuid.uuid4().hex, type(exc).__name__, str(exc))
        late = [(i, r) for i, r in decoded
                if self.clock() > r.received + self.settings.request_timeout]
        for i, request in late:
            results[i] = self._publish_timeout(request.request_id, request.received, "run")
        decoded = [(i, r) for i, r in decoded if results[i] is None]
        if decoded:
            try:
                served = self._run(model, [r for _, r in decoded])
            except Exception as exc:  # noqa: BLE001
                logger.exception("unexpected error serving requests")
                served = [self._publish_error(r.request_id, type(exc).__name__, str(exc))
                          for _, r in decoded]
            for (i, _), result in zip(decoded, served):
                results[i] = result
        return [r for r in results if r is not None]

    def _publish_timeout(self, request_id: str, arrived: float, stage: str) -> dict[str, Any]:
        waited = max(0.0, self.clock() - arrived)
        return self._publish_error(
            request_id, "Timeout",
            f"request not {stage} within its time budget of {self.settings.request_timeout:g} s "
            f"(NEO_EDGE_REQUEST_TIMEOUT): {waited:.3f} s since it arrived; not run")

    # -- process mode ----------------------------------------------------------------

    def submit(self, payload: Any) -> None:
        """Queue one message (called from the IPC subscription's thread).

        A message over the size limit, or one arriving while ``max_queue`` wait already,
        is answered at once (``PayloadError`` / ``Busy``, under its request id when it
        names one) and never queued.
        """
        size = len(payload) if isinstance(payload, (bytes, bytearray, str)) else 0
        if size > self.settings.max_payload_bytes:
            self._publish_error(_request_id_of(payload), "PayloadError",
                                f"payload of {size} bytes is over the limit of "
                                f"{self.settings.max_payload_bytes} bytes")
            return
        try:
            self.queue.put_nowait((payload, self.clock()))
        except queue.Full:
            self._publish_error(_request_id_of(payload), "Busy",
                                f"{self.settings.max_queue} requests are waiting; try again "
                                f"later")

    def serve_once(self, timeout: float = 1.0) -> int:
        """Take what is queued (up to ``max_batch``), serve it, return how many were taken."""
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            self.maybe_reload()
            self.telemetry.tick()
            return 0
        items = [first]
        while len(items) < self.settings.max_batch:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        self.handle([payload for payload, _ in items], [arrived for _, arrived in items])
        for _ in items:
            self.queue.task_done()
        return len(items)

    def start(self) -> threading.Thread:
        def loop() -> None:
            while not (self._stop.is_set() and self.queue.empty()):
                try:
                    self.serve_once(timeout=0.5)
                except Exception:  # noqa: BLE001 - the worker never dies
                    logger.exception("worker error")
        self._worker = threading.Thread(target=loop, name="edge-inference", daemon=True)
        self._worker.start()
        return self._worker

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after serving everything already queued."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout)
        self.telemetry.flush()


def _within(path: str, root: str) -> bool:
    """Whether ``path`` (links followed) lies inside the folder ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError):
        return False
    return True


def _request_id_of(payload: Any, limit: int = 1 << 16) -> str:
    """The request id a message names, read cheaply (no decoding of its inputs; JSON text
    of at most ``limit`` bytes parsed); else a new one."""
    try:
        if isinstance(payload, (bytes, bytearray, str)) and len(payload) <= limit:
            payload = json.loads(payload)
        value = payload.get("request_id") if isinstance(payload, dict) else None
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, str) and _REQUEST_ID.match(value) else uuid.uuid4().hex


# ---------------------------------------------------------------------------------------
# Entry points

_service: Optional[InferenceService] = None
_service_lock = threading.Lock()


def get_service(factory: Optional[Callable[[], InferenceService]] = None) -> InferenceService:
    """The module's service, created on first use from the environment."""
    global _service
    with _service_lock:
        if _service is None:
            _service = factory() if factory else InferenceService(Settings.from_environment())
        return _service


def set_service(service: Optional[InferenceService]) -> None:
    """Use ``service`` for :func:`handler` (tests, local mode); ``None`` forgets it."""
    global _service
    with _service_lock:
        _service = service


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """The Lambda entry point: serve one event (JSON object, text or bytes); return its result."""
    results = get_service().handle([event])
    return results[0]


def _message(event: Any) -> Any:
    """The payload of an IPC ``SubscriptionResponseMessage``."""
    binary = getattr(event, "binary_message", None)
    if binary is not None:
        return binary.message
    structured = getattr(event, "json_message", None)
    if structured is not None:
        return structured.message
    return event


def main(argv: Optional[list[str]] = None, *, ipc_client: Any = None,
         service: Optional[InferenceService] = None,
         stop: Optional[threading.Event] = None) -> int:
    """The process entry point: subscribe, serve until SIGTERM/SIGINT, drain, exit.

    ``ipc_client``, ``service`` and ``stop`` (set it to shut down) exist for tests and local
    mode; on a device the first two are made from the environment and signals set the third.
    """
    try:
        settings = service.settings if service else Settings.from_environment()
        if not settings.input_topic:
            raise ConfigurationError("environment variable NEO_EDGE_INPUT_TOPIC is not set; "
                                     "the process needs the topic to take requests from")
        if ipc_client is None:
            from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

            ipc_client = GreengrassCoreIPCClientV2()
        service = service or InferenceService(settings, publisher=IpcPublisher(ipc_client))
    except Exception as exc:  # noqa: BLE001 - a clear last word, then a non-zero exit
        logger.error(f"edge_inference cannot start: {exc}")
        return 1
    set_service(service)
    done = stop or threading.Event()

    def on_request(event: Any) -> None:
        service.submit(_message(event))

    def on_configuration(event: Any) -> None:
        try:
            config = ipc_client.get_configuration(key_path=[]).value
            service.on_configuration(config or {})
        except Exception as exc:  # noqa: BLE001
            logger.error(f"configuration update not applied: {exc!r}")

    def on_error(error: Exception) -> bool:
        logger.error(f"subscription error: {error!r}")
        return False  # keep the stream open

    ipc_client.subscribe_to_topic(topic=settings.input_topic, on_stream_event=on_request,
                                  on_stream_error=on_error)
    try:
        ipc_client.subscribe_to_configuration_update(key_path=[], on_stream_event=on_configuration,
                                                     on_stream_error=on_error)
    except Exception as exc:  # noqa: BLE001 - a Lambda flavour or an old nucleus
        logger.warning(f"no configuration updates: {exc!r}")
    if stop is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
    service.start()
    logger.info(f"serving {service.model.name} {service.model.version} on "
                f"{settings.input_topic} -> {settings.results_topic}")
    done.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
