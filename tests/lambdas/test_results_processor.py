"""results_processor: archive, metrics and alerts for device results, under moto (S3, SNS)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

BUCKET = "results-bucket"
REGION = "us-east-1"


def context():
    return SimpleNamespace(function_name="results_processor", memory_limit_in_mb=256,
                           invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:rp",
                           aws_request_id="req-1")


def result(**overrides):
    event = {
        "request_id": "r-0001", "device": "thing-1", "model_name": "digits",
        "model_version": "3", "latency_ms": 2.5, "timestamp": "2026-05-01T12:00:00Z",
        "task": "classification", "labels": ["7", "1"], "scores": [0.91, 0.05],
        "confidence": 0.91,
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


@pytest.fixture
def aws():
    with mock_aws():
        yield


@pytest.fixture
def resources(aws, monkeypatch):
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    sns = boto3.client("sns", region_name=REGION)
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "false"})
    monkeypatch.setenv("RESULTS_BUCKET", BUCKET)
    monkeypatch.setenv("ALERT_TOPIC_ARN", topic)
    monkeypatch.delenv("LOW_CONFIDENCE_THRESHOLD", raising=False)
    monkeypatch.delenv("ANOMALY_THRESHOLD", raising=False)
    monkeypatch.delenv("RESULTS_PREFIX", raising=False)

    def alerts():
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(json.loads(m["Body"])["Message"]) for m in messages]

    return SimpleNamespace(s3=s3, topic=topic, alerts=alerts)


@pytest.fixture
def processor(resources, load_lambda):
    return load_lambda("results_processor")


def emf_records(captured: str) -> list[dict]:
    return [json.loads(line) for line in captured.splitlines()
            if line.startswith("{") and '"_aws"' in line]


def stored(s3, key):
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_stores_the_result_partitioned_by_device_and_date(processor, resources):
    out = processor.handler(result(), context())

    key = out["key"]
    assert re.fullmatch(r"results/device=thing-1/date=2026-05-01/r-0001-[0-9a-f]{16}\.json", key)
    assert out == {"status": "stored", "key": key, "alerts": []}
    body = stored(resources.s3, key)
    assert body["labels"] == ["7", "1"] and body["model_version"] == "3"
    assert body["received_at"].endswith("Z")


def test_date_partition_comes_from_epoch_milliseconds(processor, resources):
    # 2026-05-02T00:00:00Z, as IoT SQL's timestamp() writes it.
    out = processor.handler(result(timestamp=1777680000000), context())
    assert out["key"].startswith("results/device=thing-1/date=2026-05-02/r-0001-")


def test_date_partition_is_the_time_of_receipt_without_a_timestamp(processor, resources):
    import datetime as dt
    out = processor.handler(result(timestamp=None), context())
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    assert out["key"].startswith(f"results/device=thing-1/date={today}/r-0001-")


def test_emits_emf_metrics_with_model_and_device_dimensions(processor, capsys):
    processor.handler(result(), context())

    [record] = emf_records(capsys.readouterr().out)
    directive = record["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "NeoEdge"
    assert directive["Dimensions"] == [["ModelName"], ["ModelName", "Device"]]
    names = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert names == {"InferenceLatency": "Milliseconds", "Confidence": "None"}
    assert record["ModelName"] == "digits" and record["Device"] == "thing-1"
    assert record["InferenceLatency"] == [2.5] and record["Confidence"] == [0.91]


def test_confidence_defaults_to_the_top_score(processor, capsys):
    processor.handler(result(confidence=None, scores=[0.2, 0.7, 0.1]), context())
    [record] = emf_records(capsys.readouterr().out)
    assert record["Confidence"] == [0.7]


def test_no_alert_above_the_confidence_threshold(processor, resources):
    processor.handler(result(), context())
    assert resources.alerts() == []


def test_alerts_on_low_confidence(processor, resources, capsys):
    out = processor.handler(result(confidence=0.3, scores=[0.3, 0.2]), context())

    assert out["alerts"] == ["LowConfidence"]
    [alert] = resources.alerts()
    assert alert["alerts"] == ["LowConfidence"]
    assert alert["device"] == "thing-1" and alert["request_id"] == "r-0001"
    assert alert["result"] == f"s3://{BUCKET}/{out['key']}"
    [record] = emf_records(capsys.readouterr().out)
    assert record["LowConfidence"] == [1]


def test_low_confidence_threshold_comes_from_the_environment(resources, load_lambda, monkeypatch):
    monkeypatch.setenv("LOW_CONFIDENCE_THRESHOLD", "0.95")
    processor = load_lambda("results_processor")
    assert processor.handler(result(), context())["alerts"] == ["LowConfidence"]


def test_low_confidence_alert_is_off_at_zero(resources, load_lambda, monkeypatch):
    monkeypatch.setenv("LOW_CONFIDENCE_THRESHOLD", "0")
    processor = load_lambda("results_processor")
    assert processor.handler(result(confidence=0.01), context())["alerts"] == []


def test_alerts_on_anomaly_score_at_the_threshold(resources, load_lambda, monkeypatch, capsys):
    monkeypatch.setenv("ANOMALY_THRESHOLD", "0.8")
    processor = load_lambda("results_processor")
    event = result(task="anomaly", labels=None, scores=None, confidence=None, anomaly_score=0.8)

    assert processor.handler(event, context())["alerts"] == ["Anomaly"]
    [alert] = resources.alerts()
    assert alert["anomaly_score"] == 0.8 and alert["anomaly_threshold"] == 0.8
    [record] = emf_records(capsys.readouterr().out)
    assert record["AnomalyScore"] == [0.8] and record["Anomalies"] == [1]


def test_no_anomaly_alert_below_the_threshold(resources, load_lambda, monkeypatch):
    monkeypatch.setenv("ANOMALY_THRESHOLD", "0.8")
    processor = load_lambda("results_processor")
    event = result(confidence=None, scores=None, anomaly_score=0.79, anomaly=True)
    assert processor.handler(event, context())["alerts"] == []


def test_without_a_threshold_the_device_flag_decides(processor, resources):
    event = result(confidence=None, scores=None, anomaly_score=0.2, anomaly=True)
    assert processor.handler(event, context())["alerts"] == ["Anomaly"]


def test_a_repeated_result_is_stored_once_and_alerted_once(processor, resources, capsys):
    event = result(confidence=0.1)
    first = processor.handler(event, context())
    second = processor.handler(json.loads(json.dumps(event)), context())

    assert first["status"] == "stored" and second == {
        "status": "duplicate", "key": first["key"], "alerts": []}
    assert len(resources.alerts()) == 1
    assert len(emf_records(capsys.readouterr().out)) == 1


def test_two_results_under_one_request_id_are_both_kept(processor, resources, capsys):
    # The request id is the caller's choice: two callers (or one reusing ids) may collide.
    first = processor.handler(result(confidence=0.1), context())
    second = processor.handler(result(confidence=0.1, latency_ms=99.0), context())

    assert first["status"] == second["status"] == "stored" and first["key"] != second["key"]
    assert stored(resources.s3, first["key"])["latency_ms"] == 2.5
    assert stored(resources.s3, second["key"])["latency_ms"] == 99.0
    assert len(resources.alerts()) == 2
    assert len(emf_records(capsys.readouterr().out)) == 2


def test_a_retry_after_a_failed_alert_alerts(processor, resources, monkeypatch):
    real_publish = processor.sns.publish
    calls = []

    def failing_publish(**kwargs):
        calls.append(kwargs)
        raise ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}}, "Publish")

    monkeypatch.setattr(processor.sns, "publish", failing_publish)
    with pytest.raises(ClientError):
        processor.handler(result(confidence=0.1), context())
    assert calls and resources.s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0

    monkeypatch.setattr(processor.sns, "publish", real_publish)
    assert processor.handler(result(confidence=0.1), context())["status"] == "stored"
    assert len(resources.alerts()) == 1


def test_concurrent_copy_is_not_counted_twice(processor, resources, monkeypatch, capsys):
    # The copy that loses the If-None-Match race returns "duplicate" and emits nothing.
    monkeypatch.setattr(processor, "_exists", lambda key: False)
    processor.handler(result(), context())
    out = processor.handler(result(), context())
    assert out["status"] == "duplicate"
    assert len(emf_records(capsys.readouterr().out)) == 1


def test_error_results_are_stored_and_counted_without_alert(processor, resources, capsys):
    event = {"request_id": "r-bad", "device": "thing-1",
             "error": {"type": "InputError", "message": "input 'x' has shape (3,)"},
             "timestamp": "2026-05-01T12:00:00Z"}
    out = processor.handler(event, context())

    assert out["status"] == "stored" and out["alerts"] == []
    assert stored(resources.s3, out["key"])["error"]["type"] == "InputError"
    [record] = emf_records(capsys.readouterr().out)
    assert record["InferenceErrors"] == [1] and record["ModelName"] == "unknown"
    assert resources.alerts() == []


def test_results_prefix_from_the_environment(resources, load_lambda, monkeypatch):
    monkeypatch.setenv("RESULTS_PREFIX", "archive/results/")
    processor = load_lambda("results_processor")
    out = processor.handler(result(), context())
    assert out["key"].startswith("archive/results/device=thing-1/")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("request_id", None, "result field 'request_id' must be a non-empty string; got None"),
    ("request_id", "../../etc", r"result field 'request_id' must match"),
    ("device", "", "result field 'device' must be a non-empty string; got ''"),
    ("device", "thing/1", r"result field 'device' must match"),
    ("model_name", None, "result field 'model_name' must be a non-empty string; got None"),
    ("latency_ms", "fast", "result field 'latency_ms' must be a finite number; got 'fast'"),
    ("latency_ms", -1, "result field 'latency_ms' must not be negative; got -1.0"),
    ("confidence", float("nan"), "result field 'confidence' must be a finite number"),
    ("timestamp", "yesterday", "result field 'timestamp' must be an ISO 8601 time"),
])
def test_fails_when_a_field_is_malformed(processor, resources, field, value, message):
    event = result()
    if value is None:
        del event[field]
    else:
        event[field] = value
    with pytest.raises(processor.InvalidResultError, match=message):
        processor.handler(event, context())
    assert resources.s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    assert resources.alerts() == []


def test_fails_when_the_event_is_not_an_object(processor):
    with pytest.raises(processor.InvalidResultError,
                       match="a result must be a JSON object; got list"):
        processor.handler([1, 2], context())


@pytest.mark.parametrize("missing", ["RESULTS_BUCKET", "ALERT_TOPIC_ARN"])
def test_fails_when_a_required_variable_is_missing(resources, load_lambda, monkeypatch, missing):
    monkeypatch.delenv(missing)
    with pytest.raises(RuntimeError, match=f"environment variable {missing} is not set"):
        load_lambda("results_processor")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LOW_CONFIDENCE_THRESHOLD", "high", "LOW_CONFIDENCE_THRESHOLD must be a number; got 'high'"),
    ("LOW_CONFIDENCE_THRESHOLD", "1.5", r"LOW_CONFIDENCE_THRESHOLD must be a finite number in"),
    ("ANOMALY_THRESHOLD", "inf", "ANOMALY_THRESHOLD must be a finite number; got 'inf'"),
])
def test_fails_when_a_threshold_is_malformed(resources, load_lambda, monkeypatch, name, value,
                                             message):
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=message):
        load_lambda("results_processor")
