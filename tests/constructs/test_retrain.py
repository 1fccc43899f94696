"""RetrainPipeline: the synthesized state machine, and a run of it under moto's executor.

The run goes through the real definition: training and compilation call moto's SageMaker
(whose jobs complete at once), the Greengrass steps invoke Lambda functions whose results
moto's Docker-free Lambda backend returns from a queue (the functions themselves are
tested in tests/lambdas), and failures publish to moto's SNS.
"""

from __future__ import annotations

import io
import json
import pathlib
import re
import time
import zipfile
from types import SimpleNamespace

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk import aws_events as events
from aws_cdk.assertions import Match
from moto import mock_aws

from aws_samples import OBJECT_CREATED_EVENT
from checks import event_matches, synth_checked
from neo_edge import (AlgorithmImage, EdgeDeployment, EdgeFleet, EdgeInferenceComponent,
                      ModelArtifactBucket, NeoCompilationSet, TrainingJob)
from neo_edge.retrain import RetrainPipeline

ACCOUNT = "123456789012"
REGION = "us-east-1"
TARGETS = ["rasp4b", "jetson_xavier", "ml_c5"]


def make_bundle(folder: pathlib.Path) -> pathlib.Path:
    (folder / "neo_edge_runtime").mkdir(parents=True, exist_ok=True)
    (folder / "neo_edge_runtime" / "__init__.py").write_text("")
    (folder / "edge_inference.py").write_text(f"# {folder.name}\n")
    return folder


def base_stack(tmp: pathlib.Path, stack_id: str = "Retrain"):
    """Bucket, training job, compilation set, fleet, component and deployment."""
    app = cdk.App()
    stack = cdk.Stack(app, stack_id)
    models = ModelArtifactBucket(stack, "Models")
    training = TrainingJob(stack, "Train", bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                           input_channels={"train": "datasets/train/"}, content_type="text/csv",
                           hyperparameters={"num_round": 10})
    compilation = NeoCompilationSet(stack, "Compile", bucket=models, model=training,
                                    framework="XGBOOST", targets=TARGETS)
    fleet = EdgeFleet(stack, "Fleet", fleet_name="retrain-fleet")
    bundles = {arch: str(make_bundle(tmp / arch)) for arch in ("aarch64", "x86_64")}
    component = EdgeInferenceComponent(stack, "Component", component_name="com.example.Digits",
                                       models=list(compilation.jobs.values()),
                                       runtime_bundles=bundles)
    EdgeDeployment(stack, "Deployment", fleet=fleet, components=[component])
    return SimpleNamespace(app=app, stack=stack, models=models, training=training,
                           compilation=compilation, fleet=fleet, component=component)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    parts = base_stack(tmp_path_factory.mktemp("retrain"))
    pipeline = RetrainPipeline(
        parts.stack, "Retrain", training_job=parts.training, compilation=parts.compilation,
        component=parts.component, fleet=parts.fleet, model_upload_prefix="models/incoming/",
        schedule=events.Schedule.rate(cdk.Duration.days(7)),
        poll_interval=cdk.Duration.seconds(1), deployment_timeout=cdk.Duration.seconds(2))
    template = synth_checked(parts.app, parts.stack)
    machines = {k: v for k, v in template.find_resources("AWS::StepFunctions::StateMachine").items()
                if k.startswith("Retrain")}
    assert len(machines) == 1
    logical, machine = next(iter(machines.items()))
    body = template.to_json()
    return SimpleNamespace(template=template, body=body, pipeline=pipeline, parts=parts,
                           machine=machine, machine_logical=logical,
                           definition=definition_with_placeholders(machine))


# ---------------------------------------------------------------------------------------
# The definition


def definition_with_placeholders(machine: dict) -> dict:
    """The definition with every CloudFormation token replaced by a marker string."""
    parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else
                              "aws" if p == {"Ref": "AWS::Partition"} else "TOKEN" for p in parts))


def all_states(definition: dict) -> dict:
    """Every state by name, branches included."""
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        for branch in state.get("Branches", []):
            found.update(all_states(branch))
    return found


def test_top_level_steps_in_order(built):
    states = built.definition["States"]
    assert built.definition["StartAt"] == "Prepare the run"
    assert states["Prepare the run"]["Next"] == "Train or use the uploaded model?"
    assert states["Train"]["Next"] == "Compile for every target"
    assert states["Use the uploaded model"]["Next"] == "Compile for every target"
    assert states["Compile for every target"]["Next"] == "Publish the component version"
    assert states["Deploy to the fleet"]["Next"] == "Start polling the deployment"
    assert states["Notify the failure"]["Next"] == "Retraining failed"


def test_compiles_every_target_in_parallel(built):
    branches = built.definition["States"]["Compile for every target"]["Branches"]
    assert [b["StartAt"] for b in branches] == [f"Start compilation for {t}" for t in TARGETS]
    for target, branch in zip(TARGETS, branches):
        start = branch["States"][f"Start compilation for {target}"]
        assert start["Resource"] == "arn:aws:states:::aws-sdk:sagemaker:createCompilationJob"
        assert start["Parameters"]["InputConfig"]["S3Uri.$"] == "$.model.model_data_uri"


def test_sdk_tasks_not_sync_integrations(built):
    resources = {s.get("Resource") for s in all_states(built.definition).values()
                 if s["Type"] == "Task"}
    assert not any(r and ".sync" in r for r in resources)
    assert {"arn:aws:states:::aws-sdk:sagemaker:createTrainingJob",
            "arn:aws:states:::aws-sdk:sagemaker:describeTrainingJob",
            "arn:aws:states:::aws-sdk:sagemaker:stopTrainingJob",
            "arn:aws:states:::aws-sdk:sagemaker:describeCompilationJob"} <= resources


def test_every_polling_loop_is_bounded(built):
    states = all_states(built.definition)
    choices = {n: s for n, s in states.items() if s["Type"] == "Choice" and n != "Train or use the uploaded model?"}
    assert len(choices) == 1 + len(TARGETS) + 2  # training, each target, component, deployment
    for name, choice in choices.items():
        bounds = [c for c in choice["Choices"] if "NumericGreaterThanEquals" in c]
        assert len(bounds) == 1, name
        assert bounds[0]["NumericGreaterThanEquals"] >= 1
    # The training bound covers its stopping condition (45 min) at one poll a second.
    training = [c for c in choices["Is training over?"]["Choices"]
                if "NumericGreaterThanEquals" in c][0]
    assert training["NumericGreaterThanEquals"] == 45 * 60 + 5
    # The deployment waits deployment_timeout (2 s) at one poll a second.
    deployment = [c for c in choices["Is the deployment done?"]["Choices"]
                  if "NumericGreaterThanEquals" in c][0]
    assert deployment["NumericGreaterThanEquals"] == 2


def test_failures_are_caught_and_notified(built):
    states = built.definition["States"]
    for name in ("Train", "Compile for every target", "Publish the component version",
                 "Check the component version", "Deploy to the fleet", "Check the deployment"):
        assert states[name]["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                                          "Next": "Notify the failure"}], name
    assert states["Notify the failure"]["Resource"] == "arn:aws:states:::sns:publish"
    assert states["Retraining failed"] == {"Type": "Fail", "ErrorPath": "$.error.Error",
                                           "CausePath": "$.error.Cause"}


def test_lambda_steps_retry_retryable_error(built):
    states = built.definition["States"]
    for name in ("Publish the component version", "Check the component version",
                 "Deploy to the fleet", "Check the deployment"):
        errors = [r["ErrorEquals"] for r in states[name]["Retry"]]
        assert ["RetryableError"] in errors, name


def test_job_failures_end_in_named_errors(built):
    states = all_states(built.definition)
    assert states["Training failed"]["Error"] == "TrainingJobFailed"
    assert states["Training timed out"]["Error"] == "TrainingJobTimedOut"
    assert states["Stop training"]["Next"] == "Training timed out"
    assert states["Compilation for rasp4b failed"]["Error"] == "CompilationJobFailed"
    assert states["Compilation for ml_c5 stopped"]["Error"] == "CompilationJobStopped"


def test_state_machine_logs_and_traces(built):
    built.template.has_resource_properties("AWS::StepFunctions::StateMachine", {
        "TracingConfiguration": {"Enabled": True},
        "LoggingConfiguration": Match.object_like({"Level": "ALL"})})


def test_state_machine_may_pass_only_the_job_roles_to_sagemaker(built):
    built.template.has_resource_properties("AWS::IAM::Policy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Action": "iam:PassRole",
            "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            "Resource": [{"Fn::GetAtt": [Match.string_like_regexp("^TrainRole"), "Arn"]},
                         {"Fn::GetAtt": [Match.string_like_regexp("^CompileRole"), "Arn"]}]})])}})


def test_new_data_rule_starts_the_trigger_function(built):
    built.template.has_resource_properties("AWS::Events::Rule", {
        "EventPattern": {"source": ["aws.s3"], "detail-type": ["Object Created"],
                         "detail": {"bucket": {"name": [{"Ref": Match.string_like_regexp("^Models")}]},
                                    "object": {"key": [{"prefix": "datasets/train/"},
                                                       {"prefix": "models/incoming/"}]}}},
        "Targets": [Match.object_like({"Arn": {"Fn::GetAtt": [
            Match.string_like_regexp("^RetrainTrigger"), "Arn"]}})]})
    built.template.has_resource_properties("AWS::S3::Bucket", {
        "NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}})


def test_new_data_rule_matches_aws_documented_object_created_event(built):
    (pattern,) = [r["Properties"]["EventPattern"]
                  for r in built.template.find_resources("AWS::Events::Rule").values()
                  if r["Properties"].get("EventPattern", {}).get("source") == ["aws.s3"]]
    pattern = json.loads(json.dumps(pattern).replace(
        json.dumps(pattern["detail"]["bucket"]["name"][0]), '"models-bucket"'))
    assert event_matches(pattern, OBJECT_CREATED_EVENT)
    elsewhere = json.loads(json.dumps(OBJECT_CREATED_EVENT))
    elsewhere["detail"]["object"]["key"] = "compiled/Compile/rasp4b/model.tar.gz"
    assert not event_matches(pattern, elsewhere)


def test_events_the_trigger_fails_on_are_kept(built):
    queue = built.pipeline.failed_triggers
    queue_id = cdk.Stack.of(queue).get_logical_id(queue.node.default_child)
    trigger_id = cdk.Stack.of(queue).get_logical_id(built.pipeline.trigger_function.node.default_child)
    built.template.has_resource_properties("AWS::Lambda::EventInvokeConfig", {
        "FunctionName": {"Ref": trigger_id}, "MaximumRetryAttempts": 2,
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue_id, "Arn"]}}}})


def test_trigger_ignores_the_pipeline_outputs(built):
    built.template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "pipeline_trigger.handler",
        "Environment": {"Variables": Match.object_like({
            "TRAINING_PREFIX": "datasets/train/", "MODEL_PREFIX": "models/incoming/",
            "IGNORE_PREFIXES": "compiled/Compile/jetson_xavier/,compiled/Compile/ml_c5/,"
                               "compiled/Compile/rasp4b/,training/Train/"})}})


def test_schedule_starts_a_run(built):
    built.template.has_resource_properties("AWS::Events::Rule", {
        "ScheduleExpression": "rate(7 days)",
        "Targets": [Match.object_like({"Input": json.dumps({"trigger": "schedule"}, separators=(",", ":"))})]})


def test_publisher_knows_a_device_bundle_per_target(built):
    functions = built.template.find_resources("AWS::Lambda::Function", {
        "Properties": {"Handler": "component_publisher.handler"}})
    env = next(iter(functions.values()))["Properties"]["Environment"]["Variables"]
    assert env["COMPONENT_NAME"] == "com.example.Digits"
    text = json.dumps(env["RUNTIME_URIS"])
    assert all(f'\\"{t}\\"' in text for t in TARGETS)


def test_deployer_targets_the_fleet(built):
    built.template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "deployment_manager.handler",
        "Environment": {"Variables": Match.object_like({"TARGET_ARN": {"Fn::Join": ["", Match.array_with([
            ":thinggroup/retrain-fleet"])]}})}})


# ---------------------------------------------------------------------------------------
# Failures at synth


def test_fails_when_training_job_is_missing(built):
    with pytest.raises(ValueError, match=r"^training_job must be a TrainingJob .*; got None$"):
        RetrainPipeline(built.parts.stack, "NoTraining", training_job=None,
                        compilation=built.parts.compilation, component=built.parts.component,
                        fleet=built.parts.fleet)


def test_fails_when_compilation_is_empty(built):
    with pytest.raises(ValueError, match=r"^compilation must be a NeoCompilationSet or a non-empty "
                                         r"list \(or mapping\) of NeoCompilationJob; got \[\]$"):
        RetrainPipeline(built.parts.stack, "NoCompile", training_job=built.parts.training,
                        compilation=[], component=built.parts.component, fleet=built.parts.fleet)


def test_fails_when_component_has_no_bundle_for_a_target(tmp_path):
    parts = base_stack(tmp_path, "NoBundle")
    only_arm = SimpleNamespace(component_name="com.example.Digits",
                               runtime_bundle_assets={"aarch64": object()})
    with pytest.raises(ValueError, match=r"^component must have a device bundle for the "
                                         r"architecture of every compilation target; none for "
                                         r"x86_64 \(ml_c5\)$"):
        RetrainPipeline(parts.stack, "Retrain", training_job=parts.training,
                        compilation=parts.compilation, component=only_arm, fleet=parts.fleet)


def test_fails_when_component_is_not_an_inference_component(built):
    with pytest.raises(ValueError, match=r"^component must be an EdgeInferenceComponent"):
        RetrainPipeline(built.parts.stack, "BadComponent", training_job=built.parts.training,
                        compilation=built.parts.compilation, component="com.example.X",
                        fleet=built.parts.fleet)


def test_fails_when_job_name_prefix_is_too_long(built):
    with pytest.raises(ValueError, match=r"^job_name_prefix must be 1 to 20 letters, digits and "
                                         r"inner hyphens; got 'a-very-long-prefix-for-jobs'$"):
        RetrainPipeline(built.parts.stack, "LongPrefix", training_job=built.parts.training,
                        compilation=built.parts.compilation, component=built.parts.component,
                        fleet=built.parts.fleet, job_name_prefix="a-very-long-prefix-for-jobs")


def test_fails_when_poll_interval_is_too_long(built):
    with pytest.raises(ValueError, match=r"^poll_interval must be from 1 second to 1 hour; "
                                         r"got 7200 seconds$"):
        RetrainPipeline(built.parts.stack, "SlowPoll", training_job=built.parts.training,
                        compilation=built.parts.compilation, component=built.parts.component,
                        fleet=built.parts.fleet, poll_interval=cdk.Duration.hours(2))


def test_fails_when_model_upload_prefix_has_a_wildcard(built):
    with pytest.raises(ValueError, match=r"^model_upload_prefix must be a non-empty key prefix "
                                         r"without a leading '/' or '\*' .*; got 'models/\*'$"):
        RetrainPipeline(built.parts.stack, "Wild", training_job=built.parts.training,
                        compilation=built.parts.compilation, component=built.parts.component,
                        fleet=built.parts.fleet, model_upload_prefix="models/*")


# ---------------------------------------------------------------------------------------
# A run under moto's Step Functions executor


class Resolver:
    """Resolves the CloudFormation intrinsics of a definition with values moto knows."""

    def __init__(self, body: dict, refs: dict, arns: dict) -> None:
        self.body = body
        self.refs = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                     "AWS::URLSuffix": "amazonaws.com", **refs}
        self.arns = arns

    def __call__(self, node):
        if isinstance(node, str):
            return node
        if isinstance(node, list):
            return [self(n) for n in node]
        if "Ref" in node:
            return self.refs.get(node["Ref"], node["Ref"].lower())
        if "Fn::GetAtt" in node:
            logical, attribute = node["Fn::GetAtt"]
            if logical in self.arns:
                return self.arns[logical]
            kind = self.body["Resources"][logical]["Type"]
            if kind == "AWS::IAM::Role":
                return f"arn:aws:iam::{ACCOUNT}:role/{logical}"
            if kind == "AWS::S3::Bucket":
                return f"arn:aws:s3:::{self.refs.get(logical, logical.lower())}"
            return f"{logical}.{attribute}"
        if "Fn::Join" in node:
            separator, items = node["Fn::Join"]
            return separator.join(self(i) for i in items)
        if "Fn::FindInMap" in node:
            name, first, second = (self(x) for x in node["Fn::FindInMap"])
            return self.body["Mappings"][name][first][second]
        if "Fn::Sub" in node:
            text = node["Fn::Sub"]
            for key, value in self.refs.items():
                text = text.replace("${" + key + "}", value)
            return text
        raise AssertionError(f"cannot resolve {node!r}")


def logical_of(body: dict, kind: str, prefix: str) -> str:
    """The one resource of ``kind`` whose logical id is ``prefix`` + CDK's 8-digit hash."""
    found = [k for k, r in body["Resources"].items()
             if r["Type"] == kind and re.fullmatch(f"{prefix}[0-9A-F]{{8}}", k)]
    assert len(found) == 1, (kind, prefix, found)
    return found[0]


@pytest.fixture()
def moto_run(built):
    """Creates the state machine in moto from the synthesized definition; yields a runner."""
    body = built.body
    config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
    with mock_aws(config=config):
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="runner", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
        lam = boto3.client("lambda", region_name=REGION)
        arns = {}
        for prefix in ("RetrainPublisher", "RetrainDeployer"):
            logical = logical_of(body, "AWS::Lambda::Function", prefix)
            arns[logical] = lam.create_function(
                FunctionName=prefix, Runtime="python3.11", Role=role, Handler="handler.handler",
                Code={"ZipFile": code.getvalue()})["FunctionArn"]
        topic = boto3.client("sns", region_name=REGION).create_topic(Name="alerts")["TopicArn"]
        refs = {logical_of(body, "AWS::SNS::Topic", "RetrainAlerts"): topic,
                logical_of(body, "AWS::S3::Bucket", "Models"): "models"}
        definition = Resolver(body, refs, arns)(built.machine["Properties"]["DefinitionString"])
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(name="retrain", definition=definition,
                                           roleArn=role)["stateMachineArn"]
        from moto.awslambda.utils import get_backend
        queue = get_backend(ACCOUNT, REGION).lambda_simple_results_queue

        def run(execution_input: dict, lambda_results: list) -> dict:
            queue[:] = [json.dumps(r) for r in lambda_results]
            arn = sfn.start_execution(stateMachineArn=machine,
                                      input=json.dumps(execution_input))["executionArn"]
            deadline = time.time() + 60
            while time.time() < deadline:
                described = sfn.describe_execution(executionArn=arn)
                if described["status"] != "RUNNING":
                    return described
                time.sleep(0.1)
            raise AssertionError("the execution did not finish within 60 seconds")

        from moto.sns.models import sns_backends
        yield SimpleNamespace(run=run, sagemaker=boto3.client("sagemaker", region_name=REGION),
                              sent=lambda: sns_backends[ACCOUNT][REGION].topics[topic].sent_notifications,
                              queue=queue)


PUBLISHED = {"component_arn": "arn:aws:greengrass:us-east-1:123456789012:components:"
                              "com.example.Digits:versions:1.0.7",
             "component_name": "com.example.Digits", "component_version": "1.0.7",
             "state": "DEPLOYABLE", "done": True}
DEPLOYING = {"deployment_id": "d-1", "done": False}
DEPLOYED = {"deployment_id": "d-1", "done": True, "succeeded": 2, "failed": 0, "pending": 0}
PENDING = {"deployment_id": "d-1", "done": False, "succeeded": 1, "failed": 0, "pending": 1}


def test_run_trains_compiles_publishes_and_deploys(moto_run, built):
    done = moto_run.run({"trigger": "training_data",
                         "training_data_uri": "s3://models/datasets/train/"},
                        [PUBLISHED, DEPLOYING, DEPLOYED])
    assert done["status"] == "SUCCEEDED", done.get("cause")
    output = json.loads(done["output"])
    run_id = output["run"]["id"]
    prefix = built.pipeline.job_name_prefix

    training = moto_run.sagemaker.describe_training_job(TrainingJobName=f"{prefix}-t-{run_id}")
    assert training["TrainingJobStatus"] == "Completed"
    assert training["HyperParameters"] == {"num_round": "10"}
    assert training["OutputDataConfig"]["S3OutputPath"] == "s3://models/training/Train"
    assert output["model"]["model_data_uri"] == training["ModelArtifacts"]["S3ModelArtifacts"]

    for i, target in enumerate(TARGETS):
        job = moto_run.sagemaker.describe_compilation_job(
            CompilationJobName=f"{prefix}-c{i}-{run_id}")
        assert job["CompilationJobStatus"] == "COMPLETED"
        assert job["InputConfig"]["S3Uri"] == output["model"]["model_data_uri"]
        assert job["OutputConfig"]["TargetDevice"] == target
        assert job["OutputConfig"]["S3OutputLocation"] == \
            f"s3://models/compiled/Compile/{target}/{run_id}"
    assert output["compiled"] == [
        {"target": t, "model_uri": f"s3://models/compiled/Compile/{t}/{run_id}"} for t in TARGETS]
    assert output["component"]["component_version"] == "1.0.7"
    assert output["deployment"]["done"] is True
    assert not moto_run.queue and not moto_run.sent()


def test_uploaded_model_skips_training(moto_run, built):
    model = "s3://models/models/incoming/model.tar.gz"
    done = moto_run.run({"trigger": "model", "model_data_uri": model},
                        [PUBLISHED, DEPLOYING, DEPLOYED])
    assert done["status"] == "SUCCEEDED", done.get("cause")
    output = json.loads(done["output"])
    assert not moto_run.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    job = moto_run.sagemaker.describe_compilation_job(
        CompilationJobName=f"{built.pipeline.job_name_prefix}-c0-{output['run']['id']}")
    assert job["InputConfig"]["S3Uri"] == model


def test_deployment_that_never_finishes_is_notified_and_fails(moto_run):
    done = moto_run.run({"trigger": "model", "model_data_uri": "s3://models/models/incoming/m.tar.gz"},
                        [PUBLISHED, DEPLOYING, PENDING, PENDING])
    assert done["status"] == "FAILED"
    assert done["error"] == "DeploymentTimedOut"
    assert not moto_run.queue  # two status polls, then the bound
    sent = moto_run.sent()
    assert len(sent) == 1
    assert sent[0][2] == "neo-edge retraining failed"
    assert "DeploymentTimedOut: devices were still taking the deployment after 2 polls" in sent[0][1]
