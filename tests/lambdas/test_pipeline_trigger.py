"""pipeline_trigger: S3 events start the retraining state machine once, never on its own outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from aws_samples import OBJECT_CREATED_EVENT

REGION = "us-east-1"
BUCKET = "artifacts"
DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})


def context():
    return SimpleNamespace(function_name="pipeline_trigger", memory_limit_in_mb=256,
                           invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:pt",
                           aws_request_id="req-1")


def s3_record(key, *, event_name="ObjectCreated:Put", etag="abc123", version_id=None,
              sequencer="0055AED6DCD90281E5"):
    obj = {"key": key, "size": 10, "eTag": etag, "sequencer": sequencer}
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": "2026-05-01T12:00:00.000Z", "eventName": event_name,
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "retrain",
               "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"}, "object": obj},
    }


def notification(*records):
    return {"Records": list(records)}


def eventbridge(key, *, detail_type="Object Created", version_id="v1"):
    return {
        "version": "0", "id": "e-1", "detail-type": detail_type, "source": "aws.s3",
        "account": "123456789012", "time": "2026-05-01T12:00:00Z", "region": REGION,
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {"version": "0", "bucket": {"name": BUCKET},
                   "object": {"key": key, "size": 10, "etag": "abc123", "version-id": version_id,
                              "sequencer": "0055AED6DCD90281E5"},
                   "request-id": "r", "requester": "123456789012", "reason": "PutObject"},
    }


@pytest.fixture
def state_machine(monkeypatch):
    with mock_aws():
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(
            name="retrain", definition=DEFINITION,
            roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
        monkeypatch.setenv("STATE_MACHINE_ARN", arn)
        monkeypatch.setenv("TRAINING_PREFIX", "datasets/train/")
        monkeypatch.setenv("IGNORE_PREFIXES", "models/, compiled/,results/")
        monkeypatch.delenv("MODEL_PREFIX", raising=False)
        monkeypatch.delenv("TRIGGER_SUFFIXES", raising=False)

        def executions():
            found = sfn.list_executions(stateMachineArn=arn)["executions"]
            return [dict(e, input=json.loads(sfn.describe_execution(
                executionArn=e["executionArn"])["input"])) for e in found]

        yield SimpleNamespace(client=sfn, arn=arn, executions=executions)


@pytest.fixture
def trigger(state_machine, load_lambda):
    return load_lambda("pipeline_trigger")


def test_new_training_data_starts_the_pipeline(trigger, state_machine):
    out = trigger.handler(notification(s3_record("datasets/train/part-0001.csv")), context())

    [started] = out["started"]
    assert started["trigger"] == "training_data" and out["ignored"] == []
    [execution] = state_machine.executions()
    assert execution["name"] == started["name"]
    assert execution["input"] == {
        "trigger": "training_data", "bucket": BUCKET, "key": "datasets/train/part-0001.csv",
        "version_id": None, "etag": "abc123",
        "object_uri": f"s3://{BUCKET}/datasets/train/part-0001.csv",
        "training_data_uri": f"s3://{BUCKET}/datasets/train/",
    }


def test_url_encoded_keys_are_decoded(trigger, state_machine):
    out = trigger.handler(notification(s3_record("datasets/train/my+file%281%29.csv")), context())
    assert out["started"][0]["key"] == "datasets/train/my file(1).csv"
    assert state_machine.executions()[0]["input"]["key"] == "datasets/train/my file(1).csv"


def test_a_redelivered_event_starts_one_execution(trigger, state_machine):
    event = notification(s3_record("datasets/train/a.csv"))
    trigger.handler(event, context())
    trigger.handler(event, context())
    assert len(state_machine.executions()) == 1


def test_a_redelivered_event_after_the_run_finished_is_already_started(trigger, state_machine):
    event = notification(s3_record("datasets/train/a.csv"))
    first = trigger.handler(event, context())
    state_machine.client.stop_execution(executionArn=first["started"][0]["execution_arn"])

    second = trigger.handler(event, context())

    assert second["started"] == []
    assert second["already_started"] == [{"key": "datasets/train/a.csv",
                                          "name": first["started"][0]["name"]}]
    assert len(state_machine.executions()) == 1


def test_a_new_version_of_the_same_key_starts_another_run(trigger, state_machine):
    trigger.handler(notification(s3_record("datasets/train/a.csv", version_id="v1")), context())
    trigger.handler(notification(s3_record("datasets/train/a.csv", version_id="v2")), context())
    assert len(state_machine.executions()) == 2


def test_execution_names_are_valid_and_short(trigger):
    obj = trigger.ObjectCreated(bucket=BUCKET, key="datasets/train/" + "x y!" * 50 + ".csv",
                                etag="e", version_id=None, sequencer="s")
    name = trigger.execution_name("training_data", obj)
    assert len(name) <= 80
    assert all(c.isalnum() or c in "-_" for c in name)


@pytest.mark.parametrize("key", ["models/model.tar.gz", "compiled/rasp4b/model.tar.gz",
                                 "results/device=a/date=2026-05-01/r.json"])
def test_ignores_the_pipelines_own_outputs(trigger, state_machine, key):
    out = trigger.handler(notification(s3_record(key)), context())
    assert out["started"] == [] and out["ignored"][0]["reason"].startswith("under ignored prefix")
    assert state_machine.executions() == []


def test_ignored_prefixes_win_over_the_training_prefix(state_machine, load_lambda, monkeypatch):
    monkeypatch.setenv("IGNORE_PREFIXES", "datasets/train/processed/")
    trigger = load_lambda("pipeline_trigger")
    out = trigger.handler(notification(s3_record("datasets/train/processed/x.csv")), context())
    assert out["started"] == [] and state_machine.executions() == []


def test_ignores_keys_outside_the_prefixes_and_folder_markers(trigger, state_machine):
    out = trigger.handler(notification(s3_record("other/x.csv"), s3_record("datasets/train/")),
                          context())
    assert [i["reason"] for i in out["ignored"]] == ["outside the training and model prefixes",
                                                    "a folder marker"]
    assert state_machine.executions() == []


def test_ignores_deletions_and_the_s3_test_event(trigger, state_machine):
    trigger.handler(notification(s3_record("datasets/train/a.csv",
                                           event_name="ObjectRemoved:Delete")), context())
    trigger.handler({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET},
                    context())
    assert state_machine.executions() == []


def test_model_uploads_skip_training(state_machine, load_lambda, monkeypatch):
    monkeypatch.setenv("MODEL_PREFIX", "uploads/models/")
    trigger = load_lambda("pipeline_trigger")
    out = trigger.handler(notification(s3_record("uploads/models/digits.onnx")), context())

    assert out["started"][0]["trigger"] == "model"
    [execution] = state_machine.executions()
    assert execution["name"].startswith("model-digits-onnx-")
    assert execution["input"]["model_data_uri"] == f"s3://{BUCKET}/uploads/models/digits.onnx"
    assert "training_data_uri" not in execution["input"]


def test_trigger_suffixes_start_one_run_per_data_set(state_machine, load_lambda, monkeypatch):
    monkeypatch.setenv("TRIGGER_SUFFIXES", "_SUCCESS")
    trigger = load_lambda("pipeline_trigger")
    event = notification(*[s3_record(f"datasets/train/part-{i}.csv") for i in range(3)],
                         s3_record("datasets/train/_SUCCESS"))
    out = trigger.handler(event, context())
    assert [s["key"] for s in out["started"]] == ["datasets/train/_SUCCESS"]
    assert len(out["ignored"]) == 3 and len(state_machine.executions()) == 1


def test_eventbridge_object_created_starts_the_pipeline(trigger, state_machine):
    out = trigger.handler(eventbridge("datasets/train/b.csv"), context())
    assert out["started"][0]["key"] == "datasets/train/b.csv"
    assert state_machine.executions()[0]["input"]["version_id"] == "v1"


def test_aws_documented_object_created_event_starts_the_pipeline(trigger, state_machine):
    # An unversioned bucket's event: no version-id; the execution is named by etag and sequencer.
    out = trigger.handler(OBJECT_CREATED_EVENT, context())
    assert out["started"][0]["key"] == "datasets/train/part-0001.csv"
    (execution,) = state_machine.executions()
    assert execution["input"]["etag"] == "f31d8546bb67845b4d3048cde533b937"
    assert execution["input"]["version_id"] is None
    trigger.handler(OBJECT_CREATED_EVENT, context())
    assert len(state_machine.executions()) == 1


def test_eventbridge_other_detail_types_are_ignored(trigger, state_machine):
    out = trigger.handler(eventbridge("datasets/train/b.csv", detail_type="Object Deleted"),
                          context())
    assert out == {"started": [], "already_started": [], "ignored": []}


def test_other_errors_from_step_functions_propagate(trigger, monkeypatch):
    def denied(**kwargs):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                          "StartExecution")

    monkeypatch.setattr(trigger.sfn, "start_execution", denied)
    with pytest.raises(ClientError) as exc:
        trigger.handler(notification(s3_record("datasets/train/a.csv")), context())
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"


def test_fails_when_the_event_is_not_an_s3_event(trigger):
    with pytest.raises(trigger.InvalidEventError,
                       match=r"event is neither an S3 notification \(Records\) nor an EventBridge "
                             r"S3 event \(source aws.s3\); got keys \['foo'\]"):
        trigger.handler({"foo": 1}, context())


def test_fails_when_the_event_is_not_an_object(trigger):
    with pytest.raises(trigger.InvalidEventError, match="event must be a JSON object; got str"):
        trigger.handler("datasets/train/a.csv", context())


@pytest.mark.parametrize("missing", ["STATE_MACHINE_ARN", "TRAINING_PREFIX"])
def test_fails_when_a_required_variable_is_missing(state_machine, load_lambda, monkeypatch,
                                                   missing):
    monkeypatch.delenv(missing)
    with pytest.raises(RuntimeError, match=f"environment variable {missing} is not set"):
        load_lambda("pipeline_trigger")


def test_fails_when_the_training_prefix_is_ignored(state_machine, load_lambda, monkeypatch):
    monkeypatch.setenv("IGNORE_PREFIXES", "datasets/")
    with pytest.raises(RuntimeError, match="TRAINING_PREFIX 'datasets/train/' lies under "
                                           "IGNORE_PREFIXES entry 'datasets/'"):
        load_lambda("pipeline_trigger")
