"""Process one inference result a device published: archive it, measure it, alert on it.

The target of the fleet's IoT topic rule (``SELECT * FROM '<results topic>'`` and the error
topic). The event is the JSON a device's ``edge_inference`` component published::

    {"request_id": "r-0001", "device": "thing-1", "model_name": "digits",
     "model_version": "3", "latency_ms": 2.4, "timestamp": "2026-05-01T12:00:00Z",
     "task": "classification", "labels": ["7", "1"], "scores": [0.91, 0.05],
     "confidence": 0.91}

or, for an anomaly model, ``"anomaly_score": 0.97`` (and optionally ``"anomaly": true``), or,
for a request the device could not serve, ``"error": {"type": "InputError", "message": ...}``
(``model_name`` and ``model_version`` may then be missing).

What it does with a result:

1. stores it in ``s3://$RESULTS_BUCKET/<RESULTS_PREFIX>/device=<device>/date=<YYYY-MM-DD>/
   <request_id>-<digest>.json`` (the date is the result's ``timestamp`` in UTC, or the time of
   receipt when the device sent none; the digest is of the result's content): a Hive-style
   layout Athena and Glue read as partitions;
2. emits CloudWatch metrics in embedded metric format (namespace
   ``$POWERTOOLS_METRICS_NAMESPACE``, default ``NeoEdge``), each under two dimension sets,
   ``[ModelName]`` and ``[ModelName, Device]``: ``InferenceLatency`` (milliseconds),
   ``Confidence`` (none), ``AnomalyScore`` (none), ``InferenceErrors`` (count, 1 per error
   result), ``LowConfidence`` and ``Anomalies`` (count, 1 per alert of that kind);
3. publishes an alert to ``$ALERT_TOPIC_ARN`` when the confidence is below
   ``$LOW_CONFIDENCE_THRESHOLD`` or the anomaly score is at or above ``$ANOMALY_THRESHOLD``
   (or, with no anomaly threshold set, when the device flagged ``"anomaly": true``).

Idempotent on the result: the IoT rule engine retries a failed invocation, and a device may
publish a result twice (MQTT QoS 1), each time with the same bytes. The object key is derived
from the device, the request id and a digest of the result's content, so a repeat finds the
object already there (``HeadObject``) and stops before alerting or counting again, while two
different results under one request id (the id is the caller's choice: two callers, or one
that reuses ids) are both kept; the object is written with ``If-None-Match: *`` so that, of two
copies processed at the same moment, only one counts. The alert is sent before the object is
written: a failure between the two makes the retry alert again (an alert is delivered at least
once, never lost).

A result that is not a JSON object with a usable ``request_id`` and ``device`` raises
:class:`InvalidResultError`, naming the field; after Lambda's retries the result and the
error go to the function's on-failure destination (the telemetry's failed-results queue).

Environment variables
---------------------
RESULTS_BUCKET
    Required. The bucket results are stored in.
ALERT_TOPIC_ARN
    Required. The SNS topic alerts go to.
LOW_CONFIDENCE_THRESHOLD
    Optional, a number in [0, 1]. Default: ``0.5``; ``0`` turns the low-confidence alert off.
ANOMALY_THRESHOLD
    Optional, a number. Default: unset, the device's own ``"anomaly": true`` flag decides.
RESULTS_PREFIX
    Optional. Default: ``results``.
POWERTOOLS_METRICS_NAMESPACE
    Optional. Default: ``NeoEdge``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.common import DictWrapper
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

__all__ = ["ConfigurationError", "InvalidResultError", "InferenceResult", "handler"]

DEFAULT_LOW_CONFIDENCE_THRESHOLD = 0.5
DEFAULT_NAMESPACE = "NeoEdge"

#: IoT thing names: https://docs.aws.amazon.com/iot/latest/apireference/API_CreateThing.html
_DEVICE = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
#: Request ids become object key names: keep them to characters that need no escaping.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ConfigurationError(RuntimeError):
    """An environment variable the function needs is missing or malformed."""


class InvalidResultError(ValueError):
    """The event is not a result this function can store."""


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set; results_processor "
                                 f"needs it (see the module docstring)")
    return value


def _optional_float(name: str, default: float | None, *, low: float | None = None,
                    high: float | None = None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"environment variable {name} must be a number; got {raw!r}") from None
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" in [{low}, {high}]" if low is not None and high is not None else ""
        raise ConfigurationError(f"environment variable {name} must be a finite number{bounds}; "
                                 f"got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """What the environment configures; read once, at import (a cold start)."""

    results_bucket: str
    alert_topic_arn: str
    low_confidence_threshold: float
    anomaly_threshold: float | None
    results_prefix: str

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            results_bucket=_required("RESULTS_BUCKET"),
            alert_topic_arn=_required("ALERT_TOPIC_ARN"),
            low_confidence_threshold=_optional_float(
                "LOW_CONFIDENCE_THRESHOLD", DEFAULT_LOW_CONFIDENCE_THRESHOLD, low=0.0, high=1.0),
            anomaly_threshold=_optional_float("ANOMALY_THRESHOLD", None),
            results_prefix=os.environ.get("RESULTS_PREFIX", "").strip().strip("/") or "results",
        )


class InferenceResult(DictWrapper):
    """A device's inference result, read field by field with the checks a key needs."""

    def _text(self, field: str, pattern: re.Pattern | None = None) -> str:
        value = self.get(field)
        if not isinstance(value, str) or not value:
            raise InvalidResultError(f"result field {field!r} must be a non-empty string; got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise InvalidResultError(f"result field {field!r} must match {pattern.pattern}; got {value!r}")
        return value

    def _number(self, field: str) -> float | None:
        value = self.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidResultError(f"result field {field!r} must be a finite number; got {value!r}")
        return float(value)

    @property
    def request_id(self) -> str:
        return self._text("request_id", _REQUEST_ID)

    @property
    def device(self) -> str:
        return self._text("device", _DEVICE)

    @property
    def digest(self) -> str:
        """16 hex digits of the SHA-256 of the result's content (keys sorted): the same for
        every copy of one published result, different for another result."""
        canonical = json.dumps(self._data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def error(self) -> Any:
        return self.get("error")

    @property
    def is_error(self) -> bool:
        return self.error not in (None, "", {})

    @property
    def model_name(self) -> str:
        if self.is_error and not self.get("model_name"):
            return "unknown"
        return self._text("model_name")

    @property
    def model_version(self) -> str:
        value = self.get("model_version")
        if self.is_error and value in (None, ""):
            return "unknown"
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self._text("model_version")

    @property
    def latency_ms(self) -> float | None:
        value = self._number("latency_ms")
        if value is not None and value < 0:
            raise InvalidResultError(f"result field 'latency_ms' must not be negative; got {value!r}")
        return value

    @property
    def confidence(self) -> float | None:
        value = self._number("confidence")
        if value is None:
            scores = self.get("scores")
            if isinstance(scores, list) and scores and all(
                    isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
                value = float(max(scores))
        return value

    @property
    def anomaly_score(self) -> float | None:
        return self._number("anomaly_score")

    @property
    def anomaly_flag(self) -> bool:
        return self.get("anomaly") is True

    @property
    def timestamp(self) -> dt.datetime | None:
        """The result's own time, from an ISO 8601 string or epoch seconds (or milliseconds)."""
        value = self.get("timestamp")
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            seconds = value / 1000.0 if value > 1e11 else float(value)
            try:
                return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
            except (OverflowError, OSError, ValueError):
                pass
        elif isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
        raise InvalidResultError("result field 'timestamp' must be an ISO 8601 time or epoch "
                                 f"seconds; got {value!r}")

    def validate(self) -> None:
        """Read every field once, so a malformed one fails before anything is written."""
        for field in ("request_id", "device", "model_name", "model_version", "latency_ms",
                      "confidence", "anomaly_score", "timestamp"):
            getattr(self, field)


settings = Settings.from_environment()
logger = Logger()
# No "service" dimension: the dashboards and alarms query [ModelName] and [ModelName, Device].
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE,
                  service="")
s3 = boto3.client("s3")
sns = boto3.client("sns")


def object_key(result: InferenceResult, received: dt.datetime) -> str:
    """Where a result is stored: one object per device, request id and result content."""
    when = (result.timestamp or received).astimezone(dt.timezone.utc)
    return (f"{settings.results_prefix}/device={result.device}/date={when:%Y-%m-%d}/"
            f"{result.request_id}-{result.digest}.json")


def _exists(key: str) -> bool:
    try:
        s3.head_object(Bucket=settings.results_bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _alerts(result: InferenceResult) -> list[str]:
    if result.is_error:
        return []
    alerts = []
    confidence = result.confidence
    if confidence is not None and confidence < settings.low_confidence_threshold:
        alerts.append("LowConfidence")
    score = result.anomaly_score
    if settings.anomaly_threshold is not None:
        if score is not None and score >= settings.anomaly_threshold:
            alerts.append("Anomaly")
    elif result.anomaly_flag:
        alerts.append("Anomaly")
    return alerts


def _alert(result: InferenceResult, kinds: list[str], key: str) -> None:
    subject = f"neo-edge {' and '.join(kinds)} on {result.device}"[:100]
    message = {
        "alerts": kinds,
        "device": result.device,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "request_id": result.request_id,
        "confidence": result.confidence,
        "low_confidence_threshold": settings.low_confidence_threshold,
        "anomaly_score": result.anomaly_score,
        "anomaly_threshold": settings.anomaly_threshold,
        "result": f"s3://{settings.results_bucket}/{key}",
    }
    sns.publish(
        TopicArn=settings.alert_topic_arn,
        Subject=subject,
        Message=json.dumps(message),
        MessageAttributes={
            "alert": {"DataType": "String", "StringValue": ",".join(kinds)},
            "device": {"DataType": "String", "StringValue": result.device},
            "model_name": {"DataType": "String", "StringValue": result.model_name},
        },
    )


def _count(result: InferenceResult, alerts: list[str]) -> None:
    metrics.add_dimension(name="ModelName", value=result.model_name)
    metrics.add_dimensions(ModelName=result.model_name, Device=result.device)
    if result.is_error:
        metrics.add_metric(name="InferenceErrors", unit=MetricUnit.Count, value=1)
    if result.latency_ms is not None:
        metrics.add_metric(name="InferenceLatency", unit=MetricUnit.Milliseconds,
                           value=result.latency_ms)
    if result.confidence is not None:
        metrics.add_metric(name="Confidence", unit=MetricUnit.NoUnit, value=result.confidence)
    if result.anomaly_score is not None:
        metrics.add_metric(name="AnomalyScore", unit=MetricUnit.NoUnit, value=result.anomaly_score)
    for kind in alerts:
        metrics.add_metric(name="Anomalies" if kind == "Anomaly" else kind,
                           unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Store, measure and (when needed) alert on one device result.

    Returns
    -------
    dict
        ``{"status": "stored" | "duplicate", "key": <object key>, "alerts": [...]}``.

    Raises
    ------
    InvalidResultError
        The event is not a JSON object, or a field it needs is missing or malformed.
    """
    if not isinstance(event, dict):
        raise InvalidResultError(f"a result must be a JSON object; got {type(event).__name__}")
    result = InferenceResult(event)
    result.validate()
    received = dt.datetime.now(dt.timezone.utc)
    key = object_key(result, received)
    alerts = _alerts(result)
    logger.append_keys(request_id=result.request_id, device=result.device)

    if _exists(key):
        logger.info("result already processed", extra={"key": key})
        return {"status": "duplicate", "key": key, "alerts": []}

    if alerts:
        _alert(result, alerts, key)
        logger.warning("alert sent", extra={"alerts": alerts})

    body = dict(event)
    body.setdefault("received_at", received.isoformat().replace("+00:00", "Z"))
    try:
        s3.put_object(Bucket=settings.results_bucket, Key=key, IfNoneMatch="*",
                      Body=json.dumps(body, separators=(",", ":")).encode(),
                      ContentType="application/json")
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            logger.info("result stored by a concurrent invocation", extra={"key": key})
            return {"status": "duplicate", "key": key, "alerts": alerts}
        raise

    _count(result, alerts)
    logger.info("result stored", extra={"key": key, "error": result.is_error})
    return {"status": "stored", "key": key, "alerts": alerts}
