"""``make bench-telemetry``: what the telemetry path sustains here, and what it costs.

A load generator serves N inference results on a simulated fleet (devices each serving
``--rate`` results a second, a simulated clock) through the device's own telemetry code
(``neo_edge_runtime.telemetry.Telemetry``), as each configuration publishes them:

- ``today``: the path before: one message per result, an S3 rule action and a Lambda
  function (which writes a second object) per message;
- ``all results``: every result, batched on the device, IoT rule -> Firehose (batch mode) ->
  Parquet; summaries -> Firehose -> the batched metrics transform;
- ``summaries + 1 % sampled``: the same with ``publishResults: sampled``, 1 %, plus the
  notable results (the generator makes ``--notable`` of them low-confidence).

The messages go on into the cloud path as far as it runs on this machine: moto's Firehose
(records in, objects in moto's S3) in the shape the IoT rules' Firehose actions send
(``SELECT VALUE results`` in batch mode: one ``PutRecordBatch`` per message, a record per
result; a summary one ``PutRecord``), then the metrics transform
(``lambda/summary_metrics``) over the delivered summaries, with moto's CloudWatch. Neither
moto nor this machine runs IoT Core's rules engine, Firehose's Parquet conversion or
Athena: those are counted, priced and not timed.

Printed: the sustained throughput of each stage (results or summaries a second on this
machine) and the cost per million inferences at list prices (:data:`PRICES`, with their
sources), per configuration. Results: ``benchmarks/results/telemetry.json``.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: List prices, us-east-1, on-demand, first tier, at the time of writing; one table, with
#: where each comes from. KB and GB are 1024-based where AWS meters in "5 KB increments".
PRICES = {
    "iot_message": (1.00 / 1e6, "per message of up to 5 KB (IoT Core messaging, first 1B/month)",
                    "https://aws.amazon.com/iot-core/pricing/"),
    "iot_rule": (0.15 / 1e6, "per rule triggered (per 5 KB of message)",
                 "https://aws.amazon.com/iot-core/pricing/"),
    "iot_action": (0.15 / 1e6, "per action executed", "https://aws.amazon.com/iot-core/pricing/"),
    "firehose_ingest_gb": (0.029, "per GB ingested, Direct PUT, each record rounded up to 5 KB",
                           "https://aws.amazon.com/firehose/pricing/"),
    "firehose_conversion_gb": (0.018, "per GB of format conversion (JSON to Parquet)",
                               "https://aws.amazon.com/firehose/pricing/"),
    "firehose_partitioning_gb": (0.020, "per GB through dynamic partitioning",
                                 "https://aws.amazon.com/firehose/pricing/"),
    "s3_put": (0.005 / 1000, "per PUT request (S3 Standard)", "https://aws.amazon.com/s3/pricing/"),
    "s3_get": (0.0004 / 1000, "per GET/HEAD request (S3 Standard)",
               "https://aws.amazon.com/s3/pricing/"),
    "lambda_request": (0.20 / 1e6, "per invocation", "https://aws.amazon.com/lambda/pricing/"),
    "lambda_gb_second": (0.0000166667, "per GB-second (x86)", "https://aws.amazon.com/lambda/pricing/"),
    "logs_ingest_gb": (0.50, "per GB of logs ingested (standard)",
                       "https://aws.amazon.com/cloudwatch/pricing/"),
    "put_metric_data": (0.01 / 1000, "per PutMetricData request",
                        "https://aws.amazon.com/cloudwatch/pricing/"),
}
KB5 = 5 * 1024
GB = 1024 ** 3
#: The former results_processor: 256 MB, about 50 ms per result (HEAD, SNS only on alerts,
#: PUT, EMF), and about 1 KB of logs (its JSON log line and EMF document) per invocation.
TODAY_LAMBDA = {"memory_gb": 0.25, "seconds": 0.05, "log_bytes": 1024}
#: The metrics transform: 256 MB, the buffer of 1 MB of summaries per invocation.
TRANSFORM_MEMORY_GB = 0.25
TRANSFORM_BUFFER_BYTES = 1024 * 1024


def price(name: str) -> float:
    return PRICES[name][0]


def _units(size: int) -> int:
    return max(1, math.ceil(size / KB5))


def import_lambda(name: str):
    path = ROOT / "lambda" / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(n: int, devices: int, rate: float, notable: float, config, stream_sink):
    """Serve ``n`` results over ``devices`` simulated devices at ``rate`` a second each;
    returns the messages published per topic kind and the device-side time."""
    from neo_edge_runtime import telemetry as t

    clock = [1_700_000_000.0]
    messages = {"results": [], "summary": []}

    def publisher(topic, message):
        kind = "summary" if topic.endswith("/summary") else "results"
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        messages[kind].append(len(data))
        stream_sink(kind, message, data)

    fleet = [t.Telemetry(config, publisher, device=f"core-{d}",
                         summary_topic=f"neo-edge/core-{d}/summary", clock=lambda: clock[0])
             for d in range(devices)]
    step = 1.0 / (rate * devices)
    low = int(round(1 / notable)) if notable else 0
    started = time.perf_counter()
    for i in range(n):
        tel = fleet[i % devices]
        confidence = 0.3 if low and i % low == 0 else 0.93
        tel.record(f"neo-edge/{tel.device}/results", {
            "request_id": f"req-{i:09d}", "device": tel.device, "model_name": "digits",
            "model_version": "1.0.0", "timestamp": "2024-05-01T12:00:00.000Z", "task": "classification",
            "latency_ms": 0.8 + (i % 7) * 0.1, "queue_ms": 0.05, "batch_size": 1,
            "labels": ["7", "1", "9", "4", "2"], "scores": [confidence, 0.03, 0.02, 0.01, 0.01],
            "confidence": confidence})
        clock[0] += step
    for tel in fleet:
        tel.flush()
    device_seconds = time.perf_counter() - started
    return messages, device_seconds


class FirehoseSink:
    """The IoT rules' Firehose actions, as calls to (moto's) Firehose."""

    def __init__(self, client, results_stream: str, summaries_stream: str):
        self.client = client
        self.streams = {"results": results_stream, "summary": summaries_stream}
        self.records = {"results": [], "summary": []}
        self.seconds = 0.0
        self.summaries: list = []

    def __call__(self, kind, message, data):
        started = time.perf_counter()
        if kind == "results":  # SELECT VALUE results, batchMode true, separator "\n"
            records = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in message["results"]]
            for start in range(0, len(records), 500):
                self.client.put_record_batch(DeliveryStreamName=self.streams[kind],
                                             Records=[{"Data": r} for r in records[start:start + 500]])
        else:  # SELECT *, topic(2) AS device
            records = [data + b"\n"]
            self.client.put_record(DeliveryStreamName=self.streams[kind], Record={"Data": records[0]})
            self.summaries.append(records[0])
        self.records[kind].extend(len(r) for r in records)
        self.seconds += time.perf_counter() - started


def cost_today(n: int, result_bytes: float) -> dict:
    lam = TODAY_LAMBDA
    items = {
        "IoT messages": n * _units(int(result_bytes)) * price("iot_message"),
        "IoT rule + 2 actions": n * (price("iot_rule") + 2 * price("iot_action")),
        "S3 PUT (rule archive)": n * price("s3_put"),
        "Lambda requests + duration": n * (price("lambda_request")
                                           + lam["memory_gb"] * lam["seconds"] * price("lambda_gb_second")),
        "S3 HEAD + PUT (Lambda)": n * (price("s3_get") + price("s3_put")),
        "Lambda logs (JSON + EMF)": n * lam["log_bytes"] / GB * price("logs_ingest_gb"),
    }
    return items


def cost_new(n: int, messages: dict, records: dict, transform_seconds_per_summary: float) -> dict:
    results_msgs, summary_msgs = messages["results"], messages["summary"]
    results_billed = sum(_units(r) for r in records["results"]) * KB5 / GB
    summary_billed = sum(_units(r) for r in records["summary"]) * KB5 / GB
    summary_bytes = sum(records["summary"])
    invocations = math.ceil(summary_bytes / TRANSFORM_BUFFER_BYTES) if summary_bytes else 0
    items = {
        "IoT messages": sum(_units(m) for m in results_msgs + summary_msgs) * price("iot_message"),
        "IoT rules + Firehose actions": sum(_units(m) for m in results_msgs + summary_msgs)
        * price("iot_rule") + (len(results_msgs) + len(summary_msgs)) * price("iot_action"),
        "Firehose ingestion (5 KB records)": (results_billed + summary_billed) * price("firehose_ingest_gb"),
        "Firehose Parquet conversion": results_billed * price("firehose_conversion_gb"),
        "Firehose dynamic partitioning": results_billed * price("firehose_partitioning_gb"),
        "metrics transform (Lambda + PutMetricData)": invocations * (
            price("lambda_request") + price("put_metric_data"))
        + len(records["summary"]) * transform_seconds_per_summary * TRANSFORM_MEMORY_GB
        * price("lambda_gb_second"),
    }
    return items


def run_configuration(name: str, config, args, clients) -> dict:
    firehose, s3 = clients
    suffix = name.replace(" ", "-").replace("%", "pc").replace("+", "")
    streams = []
    for kind in ("results", "summaries"):
        stream = f"bench-{suffix}-{kind}"[:64]
        firehose.create_delivery_stream(
            DeliveryStreamName=stream, DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose", "BucketARN": "arn:aws:s3:::bench",
                "Prefix": f"{suffix}/{kind}/",
                "BufferingHints": {"SizeInMBs": 128, "IntervalInSeconds": 300}})
        streams.append(stream)
    sink = FirehoseSink(firehose, *streams)
    messages, device_seconds = generate(args.n, args.devices, args.rate, args.notable, config, sink)
    metrics = import_lambda("summary_metrics")
    event = {"records": [{"recordId": str(i), "data": base64.b64encode(d).decode()}
                         for i, d in enumerate(sink.summaries)]}
    if sink.summaries:  # moto's CloudWatch starts on its first call: not the transform's time
        metrics.handler({"records": event["records"][:1]}, None)
    started = time.perf_counter()
    if sink.summaries:
        out = metrics.handler(event, None)
        assert all(r["result"] == "Ok" for r in out["records"])
    transform_seconds = time.perf_counter() - started
    per_summary = transform_seconds / max(1, len(sink.summaries))
    published = len(sink.records["results"])
    return {
        "configuration": name, "inferences": args.n, "results_published": published,
        "result_messages": len(messages["results"]), "summaries": len(messages["summary"]),
        "results_per_message": round(published / max(1, len(messages["results"])), 1),
        "throughput": {
            # The device's own work: the time spent in moto's Firehose taken out.
            "device_results_per_s": round(args.n / max(device_seconds - sink.seconds, 1e-9)),
            "firehose_records_per_s": round((published + len(sink.summaries)) / max(sink.seconds, 1e-9)),
            "transform_summaries_per_s": round(len(sink.summaries) / max(transform_seconds, 1e-9)),
        },
        "mean_result_bytes": sum(sink.records["results"]) / max(1, published),
        "cost": cost_new(args.n, messages, sink.records, per_summary),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="inferences (default 100000)")
    p.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    p.add_argument("--rate", type=float, default=10.0, help="results a second per device (10)")
    p.add_argument("--notable", type=float, default=0.005,
                   help="share of low-confidence results (default 0.005)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "telemetry.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "edge_runtime"))
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("POWERTOOLS_LOG_LEVEL", "WARNING")):
        os.environ[var] = value
    import boto3
    from moto import mock_aws

    from neo_edge_runtime.telemetry import TelemetryConfig

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        clients = (boto3.client("firehose"), s3)
        configs = {
            "all results": TelemetryConfig(results="all", batch_seconds=1.0),
            "summaries + 1 % sampled": TelemetryConfig(results="sampled", sample_rate=0.01,
                                                      batch_seconds=1.0),
        }
        runs = [run_configuration(name, config, args, clients) for name, config in configs.items()]
        objects = s3.list_objects_v2(Bucket="bench").get("KeyCount", 0)
    # Today's path publishes the same results one a message (no batch envelope, no reason).
    today = cost_today(args.n, runs[0]["mean_result_bytes"])
    rows = [("today (rule S3 + Lambda per result)", today, None)] + [
        (r["configuration"], r["cost"], r) for r in runs]
    per_million = 1e6 / args.n
    print(f"telemetry: {args.n} inferences, {args.devices} devices at {args.rate:g}/s each, "
          f"{args.notable:.1%} low-confidence; moto wrote {objects} objects\n")
    print(f"{'path':38s} {'$/M inferences':>15s} {'published':>10s} {'res/msg':>8s} "
          f"{'device res/s':>13s} {'firehose rec/s':>15s} {'transform sum/s':>16s}")
    summary = []
    for name, cost, run in rows:
        total = sum(cost.values()) * per_million
        if run:
            th = run["throughput"]
            print(f"{name:38s} {total:15.3f} {run['results_published']:10d} "
                  f"{run['results_per_message']:8.1f} {th['device_results_per_s']:13d} "
                  f"{th['firehose_records_per_s']:15d} {th['transform_summaries_per_s']:16d}")
        else:
            print(f"{name:38s} {total:15.3f} {args.n:10d} {1.0:8.1f} {'-':>13s} {'-':>15s} {'-':>16s}")
        for item, value in cost.items():
            print(f"    {item:44s} {value * per_million:10.4f}")
        summary.append({"path": name, "usd_per_million": round(total, 4),
                        "items": {k: round(v * per_million, 5) for k, v in cost.items()},
                        **({k: v for k, v in run.items() if k != "cost"} if run else {})})
    print("\nprices (us-east-1 list, first tier):")
    for key, (value, what, url) in PRICES.items():
        print(f"    {key:26s} {value:.10g}  {what}  {url}")
    print("not per inference, so not above: CloudWatch custom metrics ($0.30 per metric-month: "
          "7 metrics x (1 + versions) per model), S3 storage, Athena ($5 per TB scanned), "
          "Firehose's S3 PUTs (one object per model per buffer interval).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "runs": summary,
                                          "prices": {k: {"usd": v[0], "unit": v[1], "source": v[2]}
                                                     for k, v in PRICES.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
