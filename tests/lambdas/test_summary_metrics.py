"""summary_metrics: the summaries Firehose stream's transform (metrics, records passed on).

The event is the Firehose data-transformation contract as AWS documents it ("Transform
source data in Amazon Data Firehose": records[].recordId, approximateArrivalTimestamp and
base64 data in; recordId, result and data out), the summaries are made by the device's own
code (neo_edge_runtime.telemetry), and PutMetricData's parameters are checked against
botocore's cloudwatch model with a Stubber.
"""

from __future__ import annotations

import base64
import json

import pytest
from botocore.stub import ANY, Stubber

from neo_edge_runtime import telemetry as device


def summaries(n_versions=1, n=20):
    clock = [1_700_000_000.0]
    sent = []
    tel = device.Telemetry(device.TelemetryConfig(summary_seconds=10, results="notable"),
                           lambda topic, m: sent.append(m), device="core-1",
                           summary_topic="s", clock=lambda: clock[0])
    for v in range(n_versions):
        for i in range(n):
            tel.record("x/results", {"request_id": f"{v}-{i}", "model_name": "digits",
                                     "model_version": f"{v + 1}.0", "latency_ms": float(i),
                                     "confidence": 0.3 if i == 0 else 0.9})
    tel.record("x/errors", {"request_id": "e", "model_name": "digits", "model_version": "1.0",
                            "error": {"type": "Busy", "message": "m"}})
    clock[0] += 10
    tel.tick()
    return [m for m in sent if m.get("schema") == "neo-edge.summary/1"]


def firehose_event(payloads):
    return {"invocationId": "inv-1", "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/s",
            "region": "us-east-1",
            "records": [{"recordId": f"rec-{i}", "approximateArrivalTimestamp": 1495072949453,
                         "data": base64.b64encode(p).decode()} for i, p in enumerate(payloads)]}


@pytest.fixture
def fn(load_lambda, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("METRICS_NAMESPACE", "NeoEdge")
    module = load_lambda("summary_metrics")
    with Stubber(module.cloudwatch) as stub:
        yield module, stub


def test_one_call_puts_the_batch_s_metrics_and_records_pass_on(fn):
    module, stub = fn
    items = summaries(n_versions=2)
    stub.add_response("put_metric_data", {}, {"Namespace": "NeoEdge", "MetricData": ANY})
    out = module.handler(firehose_event([json.dumps(s).encode() for s in items]), None)
    stub.assert_no_pending_responses()
    assert [r["result"] for r in out["records"]] == ["Ok", "Ok"]
    assert [r["recordId"] for r in out["records"]] == ["rec-0", "rec-1"]
    back = [json.loads(base64.b64decode(r["data"])) for r in out["records"]]
    assert back == items
    assert base64.b64decode(out["records"][0]["data"]).endswith(b"\n")


def test_metric_data_per_model_and_per_version_with_percentile_ready_values(fn):
    module, _ = fn
    data = module.metric_data(module.aggregate(summaries(n_versions=2)), None)
    by = {(d["MetricName"], tuple(x["Value"] for x in d["Dimensions"])): d for d in data}
    assert by[("Inferences", ("digits",))]["Value"] == 40
    assert by[("Inferences", ("digits", "1.0"))]["Value"] == 20
    assert by[("InferenceErrors", ("digits", "1.0"))]["Value"] == 1
    assert by[("LowConfidence", ("digits",))]["Value"] == 2
    latency = by[("InferenceLatency", ("digits", "2.0"))]
    assert sum(latency["Counts"]) == 20 and latency["Unit"] == "Milliseconds"
    assert max(latency["Values"]) == 25.0  # 19 ms is counted at its bucket's upper bound


def test_a_record_that_is_not_a_summary_fails_alone(fn):
    module, stub = fn
    stub.add_response("put_metric_data", {}, {"Namespace": "NeoEdge", "MetricData": ANY})
    good = json.dumps(summaries()[0]).encode()
    bad = json.dumps({"model_name": "digits", "model_version": "1", "inferences": -1}).encode()
    out = module.handler(firehose_event([good, b"not json", bad]), None)
    assert [r["result"] for r in out["records"]] == ["Ok", "ProcessingFailed", "ProcessingFailed"]


def test_parse_names_the_bad_field(fn):
    module, _ = fn
    with pytest.raises(module.InvalidSummaryError) as exc:
        module.parse(json.dumps({"model_name": "m", "model_version": "1",
                                 "latency_ms": {"bounds": [1], "counts": [1, 2, 3]}}).encode())
    assert str(exc.value).startswith("summary field 'latency_ms' must hold bounds")


def test_batches_over_1000_metric_data_take_several_calls(fn):
    module, stub = fn
    items = []
    for v in range(150):  # 7 metric data per version: 1057 in all
        s = summaries()[0]
        s["model_version"] = f"v{v}"
        items.append(json.dumps(s).encode())
    stub.add_response("put_metric_data", {}, {"Namespace": "NeoEdge", "MetricData": ANY})
    stub.add_response("put_metric_data", {}, {"Namespace": "NeoEdge", "MetricData": ANY})
    module.handler(firehose_event(items), None)
    stub.assert_no_pending_responses()
