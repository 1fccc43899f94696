"""sagemaker_job: the Provider-framework handlers behind TrainingJob and NeoCompilationJob."""

from __future__ import annotations

import json
from types import SimpleNamespace

import boto3
import botocore.awsrequest
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import sagemaker_backends

REGION = "us-east-1"
ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/job"
PREFIX = "teststack-train-1a2b3c4d"

TRAINING = {
    "AlgorithmSpecification": {"TrainingImage": "683313688378.dkr.ecr.us-east-1.amazonaws.com/"
                                                "sagemaker-xgboost:1.7-1",
                               "TrainingInputMode": "File"},
    "RoleArn": ROLE,
    "HyperParameters": {"num_round": "50", "objective": "binary:logistic"},
    "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": "s3://bucket/data/train/",
        "S3DataDistributionType": "FullyReplicated"}}}],
    "OutputDataConfig": {"S3OutputPath": "s3://bucket/models/training"},
    "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
}

COMPILATION = {
    "RoleArn": ROLE,
    "InputConfig": {"S3Uri": "s3://bucket/models/model.tar.gz",
                    "DataInputConfig": json.dumps({"input": [1, 3, 224, 224]}),
                    "Framework": "ONNX"},
    "OutputConfig": {"S3OutputLocation": "s3://bucket/compiled/rasp4b",
                     "TargetDevice": "rasp4b"},
    "StoppingCondition": {"MaxRuntimeInSeconds": 900},
}


def context():
    return SimpleNamespace(function_name="sagemaker_job", memory_limit_in_mb=256,
                           invoked_function_arn=f"arn:aws:lambda:{REGION}:{DEFAULT_ACCOUNT_ID}"
                                                f":function:sagemaker_job",
                           aws_request_id="req-1")


def event(request_type, kind="training", request=None, physical_id=None, prefix=PREFIX):
    body = {
        "RequestType": request_type, "ServiceToken": "arn:aws:lambda:::function:provider",
        "ResponseURL": "https://example.invalid/", "StackId": "stack", "RequestId": "r-1",
        "LogicalResourceId": "Job", "ResourceType": "Custom::SageMakerTrainingJob",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:::function:provider", "Kind": kind,
            "JobNamePrefix": prefix,
            "Request": json.dumps(TRAINING if request is None and kind == "training"
                                  else COMPILATION if request is None else request)},
    }
    if physical_id is not None:
        body["PhysicalResourceId"] = physical_id
    return body


@pytest.fixture
def handler(load_lambda, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "sagemaker_job")
    with mock_aws():
        yield load_lambda("sagemaker_job")


@pytest.fixture
def backend(handler):
    return sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION]


def _client_error(code, message, operation):
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


# --- names -----------------------------------------------------------------------------


def test_job_name_is_prefix_and_input_hash(handler):
    name = handler.job_name("training", PREFIX, TRAINING)
    assert name.startswith(PREFIX + "-") and len(name) == len(PREFIX) + 13
    assert name == handler.job_name("training", PREFIX, json.loads(json.dumps(TRAINING)))


def test_job_name_changes_with_any_input(handler):
    changed = json.loads(json.dumps(TRAINING))
    changed["HyperParameters"]["num_round"] = "51"
    assert handler.job_name("training", PREFIX, changed) != \
        handler.job_name("training", PREFIX, TRAINING)


def test_run_id_gives_a_new_name_for_the_same_inputs(handler):
    assert handler.job_name("training", PREFIX, TRAINING, "2") != \
        handler.job_name("training", PREFIX, TRAINING)


def test_rerun_with_a_new_run_id_starts_a_new_job(handler, backend):
    first = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    rerun = event("Update", physical_id=first)
    rerun["ResourceProperties"]["RunId"] = "2"
    second = handler.on_event(rerun, context())["PhysicalResourceId"]
    assert second != first and second in backend.training_jobs


def test_longest_prefix_fits_sagemakers_limit(handler):
    prefix = "a" * handler.MAX_PREFIX
    assert len(handler.job_name("training", prefix, TRAINING)) == 63


# --- training: happy path ---------------------------------------------------------------


def test_create_starts_a_training_job_named_from_its_inputs(handler, backend):
    result = handler.on_event(event("Create"), context())
    name = handler.job_name("training", PREFIX, TRAINING)
    assert result == {"PhysicalResourceId": name}
    job = backend.training_jobs[name]
    assert job.resource_config["InstanceType"] == "ml.m5.xlarge"
    assert job.hyper_parameters == {"num_round": "50", "objective": "binary:logistic"}


def test_is_complete_returns_the_model_artifact(handler):
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    result = handler.is_complete(event("Create", physical_id=name), context())
    assert result["IsComplete"] is True
    assert result["Data"]["JobName"] == name
    assert result["Data"]["ModelArtifacts"] == \
        f"s3://bucket/models/training/{name}/output/model.tar.gz"
    assert result["Data"]["JobArn"].endswith(f":training-job/{name}")


def test_is_complete_waits_while_in_progress(handler, backend):
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    backend.training_jobs[name].training_job_status = "InProgress"
    assert handler.is_complete(event("Create", physical_id=name), context()) == \
        {"IsComplete": False}


def test_create_adopts_the_job_a_retried_create_already_started(handler, backend):
    first = handler.on_event(event("Create"), context())
    backend.training_jobs[first["PhysicalResourceId"]].training_job_status = "InProgress"
    assert handler.on_event(event("Create"), context()) == first
    assert len(backend.training_jobs) == 1


# --- failure paths ---------------------------------------------------------------------


def test_failed_job_fails_the_deployment_with_sagemakers_reason(handler, backend):
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    job = backend.training_jobs[name]
    job.training_job_status = "Failed"
    job.failure_reason = "AlgorithmError: num_round must be positive"
    with pytest.raises(handler.JobError,
                       match=f"training job {name} failed: AlgorithmError: num_round must be "
                             f"positive"):
        handler.is_complete(event("Create", physical_id=name), context())


def test_stopped_job_fails_the_deployment(handler, backend):
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    backend.training_jobs[name].training_job_status = "Stopped"
    with pytest.raises(handler.JobError, match=f"training job {name} was stopped"):
        handler.is_complete(event("Create", physical_id=name), context())


def test_create_refuses_to_rerun_inputs_that_already_failed(handler, backend):
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    backend.training_jobs[name].training_job_status = "Failed"
    backend.training_jobs[name].failure_reason = "CapacityError: no ml.m5.xlarge"
    with pytest.raises(handler.JobError, match=r"already ran with these inputs and ended "
                                               r"Failed: CapacityError: no ml.m5.xlarge; "
                                               r"change an input \(e.g. the run id\)"):
        handler.on_event(event("Create"), context())


def test_is_complete_fails_when_the_job_is_not_found(handler):
    with pytest.raises(handler.JobError, match="training job teststack-train-1a2b3c4d-gone "
                                               "does not exist"):
        handler.is_complete(event("Create", physical_id=f"{PREFIX}-gone"), context())


def test_is_complete_fails_when_the_compilation_job_is_not_found(handler):
    # moto, like SageMaker, answers ResourceNotFound for compilation jobs.
    with pytest.raises(handler.JobError, match="compilation job nope does not exist"):
        handler.is_complete(event("Create", kind="compilation", physical_id="nope"), context())


def test_create_fails_with_sagemakers_validation_message(handler, monkeypatch):
    client = handler.sagemaker_client()
    monkeypatch.setattr(client, "create_training_job", lambda **_: (_ for _ in ()).throw(
        _client_error("ValidationException", "Invalid instance type ml.x9.huge",
                      "CreateTrainingJob")))
    with pytest.raises(handler.JobError, match=r"could not start training job .*: "
                                               r"ValidationException: Invalid instance type"):
        handler.on_event(event("Create"), context())


def test_bad_event_names_the_property(handler):
    bad = event("Create")
    bad["ResourceProperties"]["Kind"] = "tuning"
    with pytest.raises(ValueError, match="resource property Kind must be one of training, "
                                         "compilation, build; got 'tuning'"):
        handler.on_event(bad, context())


def test_bad_prefix_is_refused(handler):
    with pytest.raises(ValueError, match="got 'has_underscore'"):
        handler.on_event(event("Create", prefix="has_underscore"), context())


# --- throttling ------------------------------------------------------------------------


def _throttle_first(client, operation, times):
    """Answer ``operation`` with HTTP 400 ThrottlingException ``times`` times, then pass."""
    calls = {"n": 0}

    def before_send(request, **_):
        calls["n"] += 1
        if calls["n"] <= times:
            body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
            return botocore.awsrequest.AWSResponse(request.url, 400, {}, _Raw(body.encode()))
        return None

    client.meta.events.register_first(f"before-send.sagemaker.{operation}", before_send)
    return calls


class _Raw:
    def __init__(self, data):
        self._data = data

    def stream(self, **_):
        yield self._data


def test_throttling_is_retried_with_backoff(handler, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _: None)
    client = handler.sagemaker_client()
    calls = _throttle_first(client, "CreateTrainingJob", 2)
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    assert calls["n"] == 3
    assert handler.describe("training", name)["TrainingJobStatus"] == "Completed"


def test_throttling_past_the_retries_gives_a_clear_error(handler, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _: None)
    client = handler.sagemaker_client()
    attempts = handler.MAX_ATTEMPTS
    _throttle_first(client, "CreateTrainingJob", attempts)
    with pytest.raises(handler.JobError, match=f"sagemaker kept throttling create_training_job "
                                               f"for {PREFIX}-[0-9a-f]{{12}} after {attempts} "
                                               f"attempts \\(ThrottlingException\\); retry the "
                                               f"deployment"):
        handler.on_event(event("Create"), context())


def test_throttling_while_polling_means_not_yet(handler, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _: None)
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    _throttle_first(handler.sagemaker_client(), "DescribeTrainingJob", 100)
    assert handler.is_complete(event("Create", physical_id=name), context()) == \
        {"IsComplete": False}


# --- update ----------------------------------------------------------------------------


def test_update_with_changed_inputs_starts_a_new_job(handler, backend):
    old = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    changed = json.loads(json.dumps(TRAINING))
    changed["ResourceConfig"]["InstanceCount"] = 2
    new = handler.on_event(event("Update", request=changed, physical_id=old),
                           context())["PhysicalResourceId"]
    assert new != old
    assert backend.training_jobs[new].resource_config["InstanceCount"] == 2


def test_update_without_changes_keeps_the_job(handler, backend):
    old = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    assert handler.on_event(event("Update", physical_id=old), context()) == \
        {"PhysicalResourceId": old}
    assert len(backend.training_jobs) == 1


def test_update_with_a_stale_physical_id_starts_the_job(handler, backend):
    # The id left by a create that failed before any job started (the Provider
    # framework's fallback id), or a job deleted outside CloudFormation.
    stale = "2021-01-01T00:00:00.000Z-r-1"
    result = handler.on_event(event("Update", physical_id=stale), context())
    name = handler.job_name("training", PREFIX, TRAINING)
    assert result == {"PhysicalResourceId": name}
    assert name in backend.training_jobs


# --- delete ----------------------------------------------------------------------------


def test_delete_of_a_completed_job_does_nothing(handler, backend):
    name = handler.on_event(event("Create"), context())["PhysicalResourceId"]
    assert handler.on_event(event("Delete", physical_id=name), context()) == \
        {"PhysicalResourceId": name}
    assert backend.training_jobs[name].training_job_status == "Completed"


@pytest.mark.parametrize("physical_id", [f"{PREFIX}-000000000000", "2021-01-01T00:00Z/r-1", ""])
def test_delete_of_a_missing_or_stale_job_succeeds(handler, physical_id):
    assert handler.on_event(event("Delete", physical_id=physical_id), context()) == \
        {"PhysicalResourceId": physical_id}
    assert handler.is_complete(event("Delete", physical_id=physical_id), context()) == \
        {"IsComplete": True}


@pytest.mark.parametrize("kind,status,operation,key", [
    ("training", "InProgress", "stop_training_job", "TrainingJobName"),
    ("compilation", "INPROGRESS", "stop_compilation_job", "CompilationJobName"),
])
def test_delete_stops_a_running_job(handler, kind, status, operation, key):
    # moto has no Stop*Job: a Stubber answers instead.
    client = boto3.client("sagemaker", region_name=REGION)
    handler._client_cache = client
    describe = "describe_training_job" if kind == "training" else "describe_compilation_job"
    name = f"{PREFIX}-abcdef012345"
    with Stubber(client) as stub:
        stub.add_response(describe, _describe_response(kind, name, status), {key: name})
        stub.add_response(operation, {}, {key: name})
        handler.on_event(event("Delete", kind=kind, physical_id=name), context())
        stub.assert_no_pending_responses()


def _describe_response(kind, name, status):
    now = "2026-01-01T00:00:00Z"
    if kind == "training":
        return {"TrainingJobName": name, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:1:"
                f"training-job/{name}", "TrainingJobStatus": status,
                "SecondaryStatus": "Training", "CreationTime": now,
                "AlgorithmSpecification": {"TrainingInputMode": "File"},
                "ModelArtifacts": {"S3ModelArtifacts": ""},
                "ResourceConfig": {"VolumeSizeInGB": 30},
                "StoppingCondition": {"MaxRuntimeInSeconds": 60}}
    return {"CompilationJobName": name, "CompilationJobArn": f"arn:aws:sagemaker:{REGION}:1:"
            f"compilation-job/{name}", "CompilationJobStatus": status,
            "StoppingCondition": {"MaxRuntimeInSeconds": 900}, "CreationTime": now,
            "LastModifiedTime": now, "FailureReason": "",
            "ModelArtifacts": {"S3ModelArtifacts": "s3://b/k"}, "RoleArn": ROLE,
            "InputConfig": COMPILATION["InputConfig"],
            "OutputConfig": {"S3OutputLocation": "s3://b/k"}}


# --- compilation -----------------------------------------------------------------------


def test_compilation_job_happy_path(handler, backend):
    result = handler.on_event(event("Create", kind="compilation"), context())
    name = result["PhysicalResourceId"]
    assert backend.compilation_jobs[name].output_config["TargetDevice"] == "rasp4b"
    done = handler.is_complete(event("Create", kind="compilation", physical_id=name), context())
    assert done == {"IsComplete": True, "Data": {
        "JobName": name, "JobArn": backend.compilation_jobs[name].arn,
        "ModelArtifacts": "s3://bucket/compiled/rasp4b", "InferenceImage": "InferenceImage"}}


def test_failed_compilation_reports_the_reason(handler, backend):
    name = handler.on_event(event("Create", kind="compilation"), context())["PhysicalResourceId"]
    job = backend.compilation_jobs[name]
    job.compilation_job_status = "FAILED"
    job.failure_reason = "ClientError: InputConfiguration: input shape mismatch"
    with pytest.raises(handler.JobError, match=f"compilation job {name} failed: ClientError: "
                                               f"InputConfiguration: input shape mismatch"):
        handler.is_complete(event("Create", kind="compilation", physical_id=name), context())


def test_training_and_compilation_of_the_same_prefix_get_different_names(handler):
    assert handler.job_name("training", PREFIX, TRAINING) != \
        handler.job_name("compilation", PREFIX, TRAINING)


# --- CodeBuild builds (EdgeCompilationJob) ------------------------------------------------
# Parameters and responses go through botocore's CodeBuild model (codebuild/2016-10-06):
# moto 5.2.5 runs StartBuild and BatchGetBuilds (its builds succeed at the first look);
# Stubber, which checks both against the model, gives the other outcomes.

PROJECT = "EdgeCompileProject-1a2b3c"
OUTPUT = "s3://bucket/compiled/rasp4b/0123456789abcdef/"
BUILD_REQUEST = {"environmentVariablesOverride": [
    {"name": "MODEL_URI", "value": "s3://bucket/models/model.tar.gz", "type": "PLAINTEXT"},
    {"name": "OUTPUT_URI", "value": OUTPUT, "type": "PLAINTEXT"}]}


def build_event(request_type, physical_id=None, request_id="r-1", run_id=None):
    body = event(request_type, physical_id=physical_id)
    body["RequestId"] = request_id
    body["ResourceType"] = "Custom::NeoEdgeCompilationBuild"
    body["ResourceProperties"] = {
        "ServiceToken": "arn:aws:lambda:::function:provider", "Kind": "build",
        "ProjectName": PROJECT, "OutputUri": OUTPUT, "Request": json.dumps(BUILD_REQUEST)}
    if run_id:
        body["ResourceProperties"]["RunId"] = run_id
    return body


@pytest.fixture
def codebuild(handler):
    client = boto3.client("codebuild", region_name=REGION)
    client.create_project(
        name=PROJECT, source={"type": "S3", "location": "assets/wheel.zip"},
        artifacts={"type": "NO_ARTIFACTS"},
        environment={"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
                     "computeType": "BUILD_GENERAL1_LARGE"},
        serviceRole=f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/compile")
    return client


@pytest.fixture
def stubbed(handler):
    client = boto3.client("codebuild", region_name=REGION)
    handler._codebuild_cache = client
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def _build(status, **extra):
    return {"id": f"{PROJECT}:b-1", "arn": f"arn:aws:codebuild:{REGION}:{DEFAULT_ACCOUNT_ID}:"
                                          f"build/{PROJECT}:b-1",
            "buildStatus": status, **extra}


def test_create_starts_a_build_of_the_project(handler, codebuild):
    result = handler.on_event(build_event("Create"), context())
    build_id = result["PhysicalResourceId"]
    assert build_id.startswith(f"{PROJECT}:")
    assert codebuild.list_builds_for_project(projectName=PROJECT)["ids"] == [build_id]


def test_is_complete_returns_the_compiled_model_of_a_succeeded_build(handler, codebuild):
    build_id = handler.on_event(build_event("Create"), context())["PhysicalResourceId"]
    result = handler.is_complete(build_event("Create", physical_id=build_id), context())
    assert result["IsComplete"] is True
    assert result["Data"] == {
        "BuildId": build_id, "BuildArn": f"arn:aws:codebuild:{REGION}:{DEFAULT_ACCOUNT_ID}:"
                                         f"build/{build_id}",
        "ModelArtifacts": f"{OUTPUT}model.tar.gz", "Report": f"{OUTPUT}compile-report.json"}


def test_start_sends_the_overrides_and_an_idempotency_token(handler, stubbed):
    token = handler.build_token("r-1", PROJECT, BUILD_REQUEST)
    stubbed.add_response("start_build", {"build": _build("IN_PROGRESS")},
                         {"projectName": PROJECT, "idempotencyToken": token, **BUILD_REQUEST})
    assert handler.on_event(build_event("Create"), context()) == \
        {"PhysicalResourceId": f"{PROJECT}:b-1"}


def test_idempotency_token_is_one_per_request_and_inputs(handler):
    token = handler.build_token("r-1", PROJECT, BUILD_REQUEST)
    assert token == handler.build_token("r-1", PROJECT, json.loads(json.dumps(BUILD_REQUEST)))
    assert token != handler.build_token("r-2", PROJECT, BUILD_REQUEST)
    assert token != handler.build_token("r-1", PROJECT, BUILD_REQUEST, "2")
    assert token != handler.build_token("r-1", "Other", BUILD_REQUEST)


def test_is_complete_waits_while_the_build_runs(handler, stubbed):
    stubbed.add_response("batch_get_builds", {"builds": [_build("IN_PROGRESS")]},
                         {"ids": [f"{PROJECT}:b-1"]})
    assert handler.is_complete(build_event("Create", physical_id=f"{PROJECT}:b-1"),
                               context()) == {"IsComplete": False}


@pytest.mark.parametrize("status", ["FAILED", "FAULT", "TIMED_OUT"])
def test_failed_build_fails_the_deployment_with_its_phase_and_log(handler, stubbed, status):
    phases = [{"phaseType": "INSTALL", "phaseStatus": "SUCCEEDED"},
              {"phaseType": "BUILD", "phaseStatus": "FAILED", "contexts": [
                  {"statusCode": "COMMAND_EXECUTION_ERROR",
                   "message": "Error while executing command: python -m "
                              "neo_edge_runtime.compile.cloud ... Reason: exit status 2"}]}]
    stubbed.add_response("batch_get_builds", {"builds": [_build(
        status, phases=phases, logs={"deepLink": "https://console.aws.amazon.com/logs/x"})]},
        {"ids": [f"{PROJECT}:b-1"]})
    with pytest.raises(handler.JobError, match=(
            rf"^build {PROJECT}:b-1 of CodeBuild project {PROJECT} ended {status}: BUILD "
            r"FAILED: Error while executing command: python -m neo_edge_runtime.compile.cloud "
            r"\.\.\. Reason: exit status 2 \(log: https://console.aws.amazon.com/logs/x\)$")):
        handler.is_complete(build_event("Create", physical_id=f"{PROJECT}:b-1"), context())


def test_stopped_build_fails_the_deployment(handler, stubbed):
    stubbed.add_response("batch_get_builds", {"builds": [_build("STOPPED")]},
                         {"ids": [f"{PROJECT}:b-1"]})
    with pytest.raises(handler.JobError, match=r"was stopped before it completed$"):
        handler.is_complete(build_event("Create", physical_id=f"{PROJECT}:b-1"), context())


def test_build_that_is_gone_fails_the_deployment(handler, stubbed):
    stubbed.add_response("batch_get_builds", {"builds": [],
                                              "buildsNotFound": [f"{PROJECT}:b-1"]},
                         {"ids": [f"{PROJECT}:b-1"]})
    with pytest.raises(handler.JobError, match=r"does not exist$"):
        handler.is_complete(build_event("Create", physical_id=f"{PROJECT}:b-1"), context())


def test_throttling_while_polling_is_not_yet(handler, stubbed):
    stubbed.add_client_error("batch_get_builds", "ThrottlingException", "Rate exceeded",
                             expected_params={"ids": [f"{PROJECT}:b-1"]})
    assert handler.is_complete(build_event("Create", physical_id=f"{PROJECT}:b-1"),
                               context()) == {"IsComplete": False}


def test_refused_start_names_the_project_and_the_error(handler, stubbed):
    stubbed.add_client_error("start_build", "AccountLimitExceededException",
                             "Cannot have more than 1 builds in queue for the account")
    with pytest.raises(handler.JobError, match=rf"^could not start a build of CodeBuild project "
                                               rf"{PROJECT}: AccountLimitExceededException: "
                                               r"Cannot have more than 1 builds"):
        handler.on_event(build_event("Create"), context())


def test_delete_stops_a_running_build(handler, stubbed):
    stubbed.add_response("batch_get_builds", {"builds": [_build("IN_PROGRESS")]},
                         {"ids": [f"{PROJECT}:b-1"]})
    stubbed.add_response("stop_build", {"build": _build("STOPPED")}, {"id": f"{PROJECT}:b-1"})
    assert handler.on_event(build_event("Delete", physical_id=f"{PROJECT}:b-1"), context()) == \
        {"PhysicalResourceId": f"{PROJECT}:b-1"}


def test_delete_leaves_a_finished_build_and_foreign_ids_alone(handler, stubbed):
    stubbed.add_response("batch_get_builds", {"builds": [_build("SUCCEEDED")]},
                         {"ids": [f"{PROJECT}:b-1"]})
    handler.on_event(build_event("Delete", physical_id=f"{PROJECT}:b-1"), context())
    # A failed create leaves the provider's own id: no call at all (Stubber would refuse one).
    handler.on_event(build_event("Delete", physical_id="EdgeCompile-Job-1A2B3C"), context())
    assert handler.is_complete(build_event("Delete", physical_id="x"), context()) == \
        {"IsComplete": True}


def test_bad_build_properties_name_the_property(handler):
    bad = build_event("Create")
    bad["ResourceProperties"]["OutputUri"] = "s3://bucket/no-slash"
    with pytest.raises(ValueError, match=r"^resource property OutputUri must be an s3:// prefix "
                                         r"ending in '/'; got 's3://bucket/no-slash'$"):
        handler.on_event(bad, context())
    bad = build_event("Create")
    bad["ResourceProperties"]["Request"] = json.dumps({"projectName": "other"})
    with pytest.raises(ValueError, match=r"^resource property Request must be a JSON object "
                                         r"without projectName"):
        handler.on_event(bad, context())
