"""CloudWatch metrics from device summaries: the summaries Firehose stream's transform.

Amazon Data Firehose calls this function with a batch of records (up to the processor's
buffer, about a megabyte or a minute of summaries: one invocation per batch, never per
message); each record is one summary a device published (``neo_edge_runtime.telemetry``,
schema ``neo-edge.summary/1``). The function

1. adds the batch's figures up per model and model version and publishes them with
   ``PutMetricData`` (namespace ``$METRICS_NAMESPACE``, default ``NeoEdge``), each under
   ``[ModelName]`` and ``[ModelName, ModelVersion]``: ``Inferences``, ``InferenceErrors``,
   ``LowConfidence``, ``Anomalies`` and ``ResultsPublished`` (counts), and
   ``InferenceLatency`` (milliseconds) and ``Confidence`` as distributions: the
   histograms' buckets as ``Values`` with their ``Counts``, so that CloudWatch computes
   percentiles (p90 latency) from them. A latency is counted at its bucket's upper
   bound (the highest bucket at the window's maximum): a percentile reads at most one
   bucket high;
2. returns every record to Firehose unchanged but for a trailing newline (``Ok``), or
   ``ProcessingFailed`` for one that is not a summary: Firehose then writes it under the
   stream's error prefix with the reason, and the others still land in S3.

Why ``PutMetricData`` with values and counts, not the embedded metric format: EMF takes at
most 100 values per metric and no counts, so a histogram of a minute of a busy device does
not fit; and not the IoT rule's ``cloudwatchMetric`` action: one action puts one value of one
metric with no dimensions, per message, at the price of a ``PutMetricData`` call each.
Here one call carries up to 1000 metric data of a whole batch.

A retried invocation (Firehose retries a failed one) publishes its metrics again: metrics
are at least once; the stored summaries in S3 are the exact record.

Environment variables
---------------------
METRICS_NAMESPACE
    Optional. Default: ``NeoEdge``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import os
from collections import defaultdict
from typing import Any, Iterable

import boto3
from aws_lambda_powertools import Logger

__all__ = ["SUMMARY_SCHEMA", "aggregate", "handler", "metric_data"]

SUMMARY_SCHEMA = "neo-edge.summary/1"
DEFAULT_NAMESPACE = "NeoEdge"
#: PutMetricData limits: 1000 metric data per call, 150 distinct values per datum
#: (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html).
MAX_DATA_PER_CALL = 1000
MAX_VALUES = 150

logger = Logger()
cloudwatch = boto3.client("cloudwatch")


class InvalidSummaryError(ValueError):
    """A record that is not a device summary; the message names the field."""


def _count(summary: dict, field: str) -> int:
    value = summary.get(field, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSummaryError(f"summary field {field!r} must be a count >= 0; got {value!r}")
    return value


def _histogram(summary: dict, field: str) -> dict[float, int]:
    """Bucket value -> count: each bucket at its upper bound; the overflow bucket at the
    window's maximum."""
    hist = summary.get(field)
    if hist is None:
        return {}
    bounds, counts = (hist.get("bounds"), hist.get("counts")) if isinstance(hist, dict) else (None, None)
    if (not isinstance(bounds, list) or not isinstance(counts, list)
            or len(counts) not in (len(bounds), len(bounds) + 1)
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
                       for b in bounds)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
        raise InvalidSummaryError(f"summary field {field!r} must hold bounds (numbers) and counts "
                                  f"(one per bound, or one more); got {hist!r}")
    top = hist.get("max")
    values: dict[float, int] = {}
    for i, count in enumerate(counts):
        if not count:
            continue
        if i < len(bounds):
            value = float(bounds[i])
        else:
            value = float(top) if isinstance(top, (int, float)) and math.isfinite(top) else float(bounds[-1]) * 2
        values[value] = values.get(value, 0) + count
    return values


def parse(data: bytes) -> dict:
    """One Firehose record's data as a summary, checked."""
    try:
        summary = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSummaryError(f"a summary must be JSON: {exc}") from None
    if not isinstance(summary, dict):
        raise InvalidSummaryError(f"a summary must be a JSON object; got {type(summary).__name__}")
    for field in ("model_name", "model_version"):
        if not isinstance(summary.get(field), (str, int)) or summary.get(field) in ("", None):
            raise InvalidSummaryError(f"summary field {field!r} must be a non-empty string; "
                                      f"got {summary.get(field)!r}")
    for field in ("inferences", "errors", "low_confidence", "anomalies", "published"):
        _count(summary, field)
    _histogram(summary, "latency_ms")
    _histogram(summary, "confidence")
    return summary


def aggregate(summaries: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """(model, version) -> counts and merged histograms over ``summaries``."""
    totals: dict[tuple[str, str], dict] = {}
    for s in summaries:
        key = (str(s["model_name"]), str(s["model_version"]))
        t = totals.setdefault(key, {"Inferences": 0, "InferenceErrors": 0, "LowConfidence": 0,
                                    "Anomalies": 0, "ResultsPublished": 0,
                                    "InferenceLatency": defaultdict(int),
                                    "Confidence": defaultdict(int)})
        t["Inferences"] += _count(s, "inferences")
        t["InferenceErrors"] += _count(s, "errors")
        t["LowConfidence"] += _count(s, "low_confidence")
        t["Anomalies"] += _count(s, "anomalies")
        t["ResultsPublished"] += _count(s, "published")
        for value, count in _histogram(s, "latency_ms").items():
            t["InferenceLatency"][value] += count
        for value, count in _histogram(s, "confidence").items():
            t["Confidence"][value] += count
    return totals


_UNITS = {"InferenceLatency": "Milliseconds", "Confidence": "None"}


def metric_data(totals: dict[tuple[str, str], dict], when: dt.datetime) -> list[dict]:
    """PutMetricData ``MetricData`` items for ``totals``: each metric under [ModelName] and
    [ModelName, ModelVersion] (the per-model figures summed over its versions)."""
    per_model: dict[str, dict] = {}
    for (model, _), t in totals.items():
        m = per_model.setdefault(model, {k: (defaultdict(int) if isinstance(v, dict) else 0)
                                         for k, v in t.items()})
        for k, v in t.items():
            if isinstance(v, dict):
                for value, count in v.items():
                    m[k][value] += count
            else:
                m[k] += v
    groups = [([{"Name": "ModelName", "Value": model}], t) for model, t in sorted(per_model.items())]
    groups += [([{"Name": "ModelName", "Value": model}, {"Name": "ModelVersion", "Value": version}], t)
               for (model, version), t in sorted(totals.items())]
    data: list[dict] = []
    for dimensions, t in groups:
        for name, value in t.items():
            if isinstance(value, dict):
                items = sorted((v, c) for v, c in value.items() if c)
                for start in range(0, len(items), MAX_VALUES):
                    chunk = items[start:start + MAX_VALUES]
                    data.append({"MetricName": name, "Dimensions": dimensions, "Timestamp": when,
                                 "Values": [v for v, _ in chunk], "Counts": [float(c) for _, c in chunk],
                                 "Unit": _UNITS[name]})
            else:
                data.append({"MetricName": name, "Dimensions": dimensions, "Timestamp": when,
                             "Value": float(value), "Unit": "Count"})
    return data


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Firehose data-transformation contract: ``records[].recordId`` and base64
    ``data`` in; the same ids out with ``result`` and ``data``."""
    namespace = os.environ.get("METRICS_NAMESPACE") or DEFAULT_NAMESPACE
    out, summaries = [], []
    for record in event.get("records", []):
        record_id = record["recordId"]
        try:
            raw = base64.b64decode(record["data"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raw = b""
        try:
            summary = parse(raw)
        except InvalidSummaryError as exc:
            logger.warning("not a summary", extra={"recordId": record_id, "error": str(exc)})
            out.append({"recordId": record_id, "result": "ProcessingFailed",
                        "data": record.get("data", "")})
            continue
        summaries.append(summary)
        body = raw if raw.endswith(b"\n") else raw + b"\n"
        out.append({"recordId": record_id, "result": "Ok",
                    "data": base64.b64encode(body).decode()})
    data = metric_data(aggregate(summaries), dt.datetime.now(dt.timezone.utc))
    for start in range(0, len(data), MAX_DATA_PER_CALL):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[start:start + MAX_DATA_PER_CALL])
    logger.info("summaries measured", extra={"records": len(out), "summaries": len(summaries),
                                             "metric_data": len(data)})
    return {"records": out}
