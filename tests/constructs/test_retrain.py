"""RetrainPipeline: the synthesized state machine, and a run of it under moto's executor.

The run goes through the real definition: training calls moto's SageMaker (whose jobs
complete at once), compilation moto's CodeBuild (whose builds succeed at the first look),
the Greengrass steps invoke Lambda functions whose results
moto's Docker-free Lambda backend returns from a queue (the functions themselves are
tested in tests/lambdas), and failures publish to moto's SNS.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import re
import time
import zipfile
from decimal import Decimal
from types import SimpleNamespace
from typing import Optional, Sequence

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk import aws_events as events
from aws_cdk.assertions import Match
from moto import mock_aws

from aws_samples import OBJECT_CREATED_EVENT
from checks import event_matches, synth_checked
from neo_edge import (AlgorithmImage, CanaryRollout, EdgeCompilationSet, EdgeDeployment,
                      EdgeFleet, EdgeInferenceComponent, ModelArtifactBucket, NeoCompilationJob,
                      NeoCompilationSet, TrainingJob)
from neo_edge.retrain import RetrainPipeline

ACCOUNT = "123456789012"
REGION = "us-east-1"
TARGETS = ["rasp4b", "ml_g4dn", "ml_c5"]


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
    compilation = EdgeCompilationSet(stack, "Compile", bucket=models, model=training,
                                     framework="XGBOOST", targets=TARGETS)
    fleet = EdgeFleet(stack, "Fleet", fleet_name="retrain-fleet")
    bundles = {arch: str(make_bundle(tmp / arch)) for arch in ("aarch64", "x86_64", "x86_64-cuda")}
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
        assert start["Resource"] == "arn:aws:states:::aws-sdk:codebuild:startBuild"
        model, output = start["Parameters"]["EnvironmentVariablesOverride"]
        assert model == {"Name": "MODEL_URI", "Type": "PLAINTEXT",
                         "Value.$": "$.model.model_data_uri"}
        assert output == {"Name": "OUTPUT_URI", "Type": "PLAINTEXT", "Value.$":
                          f"States.Format('s3://TOKEN/compiled/Compile/{target}/{{}}/', "
                          f"$.run.id)"}


def test_compilation_reads_each_builds_status(built):
    states = all_states(built.definition)
    check = states["Check compilation for rasp4b"]
    assert check["Resource"] == "arn:aws:states:::aws-sdk:codebuild:batchGetBuilds"
    assert check["Parameters"] == {"Ids.$": "States.Array($.build.id)"}
    assert check["ResultSelector"] == {
        "status.$": "States.ArrayGetItem($.Builds[*].BuildStatus, 0)"}
    over = states["Is compilation for rasp4b over?"]
    assert [c.get("StringEquals") for c in over["Choices"][:1]] == ["SUCCEEDED"]
    assert {c["StringEquals"] for c in over["Choices"][1]["Or"]} == {"FAILED", "FAULT",
                                                                     "TIMED_OUT"}


def test_sdk_tasks_not_sync_integrations(built):
    resources = {s.get("Resource") for s in all_states(built.definition).values()
                 if s["Type"] == "Task"}
    assert not any(r and ".sync" in r for r in resources)
    assert {"arn:aws:states:::aws-sdk:sagemaker:createTrainingJob",
            "arn:aws:states:::aws-sdk:sagemaker:describeTrainingJob",
            "arn:aws:states:::aws-sdk:sagemaker:stopTrainingJob",
            "arn:aws:states:::aws-sdk:codebuild:startBuild",
            "arn:aws:states:::aws-sdk:codebuild:batchGetBuilds",
            "arn:aws:states:::aws-sdk:codebuild:stopBuild"} <= resources
    assert not any("CompilationJob" in r for r in resources if r)


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
    assert states["Compilation for rasp4b failed"]["Error"] == "CompilationBuildFailed"
    assert states["Compilation for ml_c5 stopped"]["Error"] == "CompilationBuildStopped"
    assert states["Stop compilation for ml_g4dn"]["Resource"] == \
        "arn:aws:states:::aws-sdk:codebuild:stopBuild"
    assert states["Stop compilation for ml_g4dn"]["Next"] == \
        "Compilation for ml_g4dn timed out"


def test_state_machine_logs_and_traces(built):
    built.template.has_resource_properties("AWS::StepFunctions::StateMachine", {
        "TracingConfiguration": {"Enabled": True},
        "LoggingConfiguration": Match.object_like({"Level": "ALL"})})


def test_state_machine_may_pass_only_the_training_role_to_sagemaker(built):
    # A build runs as its project's role: StartBuild passes none.
    built.template.has_resource_properties("AWS::IAM::Policy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Action": "iam:PassRole",
            "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            "Resource": {"Fn::GetAtt": [Match.string_like_regexp("^TrainRole"), "Arn"]}})])}})


def test_state_machine_may_build_only_its_compilation_projects(built):
    machine_role = built.machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = [s for r in built.template.find_resources("AWS::IAM::Policy").values()
                  if {"Ref": machine_role} in r["Properties"]["Roles"]
                  for s in r["Properties"]["PolicyDocument"]["Statement"]]
    builds = {}
    for statement in statements:
        if str(statement["Action"]).startswith("codebuild:"):
            builds.setdefault(statement["Action"], []).append(statement["Resource"])
    assert set(builds) == {"codebuild:StartBuild", "codebuild:BatchGetBuilds",
                           "codebuild:StopBuild"}
    for action, resources in builds.items():
        flat = [r for rs in resources for r in (rs if isinstance(rs, list) else [rs])]
        projects = {r["Fn::GetAtt"][0] for r in flat}
        assert len(projects) == len(TARGETS), action
        assert all(p.startswith("Compile") and "Project" in p for p in projects), action


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
            "IGNORE_PREFIXES": "compiled/Compile/ml_c5/,compiled/Compile/ml_g4dn/,"
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
# Through a canary rollout (canary=)


@pytest.fixture(scope="module")
def canary_built(tmp_path_factory):
    parts = base_stack(tmp_path_factory.mktemp("retrain-canary"), "RetrainCanary")
    canary_fleet = EdgeFleet(parts.stack, "CanaryFleet", fleet_name="retrain-canary")
    rollout = CanaryRollout(parts.stack, "Rollout", fleet=parts.fleet, canary_fleet=canary_fleet,
                            poll_interval=cdk.Duration.seconds(1),
                            deployment_timeout=cdk.Duration.seconds(3),
                            report_timeout=cdk.Duration.seconds(3))
    pipeline = RetrainPipeline(
        parts.stack, "Retrain", training_job=parts.training, compilation=parts.compilation,
        component=parts.component, fleet=parts.fleet, model_upload_prefix="models/incoming/",
        poll_interval=cdk.Duration.seconds(1), canary=rollout)
    template = synth_checked(parts.app, parts.stack)  # cdk-nag and cfn-lint clean
    [(logical, machine)] = [(k, v) for k, v in template.find_resources(
        "AWS::StepFunctions::StateMachine").items() if k.startswith("Retrain")]
    return SimpleNamespace(template=template, body=template.to_json(), pipeline=pipeline,
                           parts=parts, rollout=rollout, canary_fleet=canary_fleet,
                           machine=machine, machine_logical=logical,
                           definition=definition_with_placeholders(machine))


CANARY_STATES = {"Name the rollout", "Deploy to the canary group", "Wait for canary reports",
                 "Count healthy canaries", "Count failed canaries", "Did the canary pass?",
                 "Canary rejected", "Canary reports incomplete"}


def test_without_canary_the_fleet_gets_the_version_at_once(built):
    states = all_states(built.definition)
    assert not CANARY_STATES & set(states)
    assert states["Is the component version done?"]["Choices"][0]["Next"] == "Deploy to the fleet"
    assert "configuration_merge" not in states["Deploy to the fleet"]["Parameters"]["Payload"]
    assert built.pipeline.canary is None


def test_with_canary_the_version_goes_to_the_canary_group_first(canary_built):
    states = all_states(canary_built.definition)
    assert CANARY_STATES <= set(states)
    assert states["Is the component version done?"]["Choices"][0]["Next"] == "Name the rollout"
    assert states["Name the rollout"]["Next"] == "Deploy to the canary group"
    canary = states["Deploy to the canary group"]["Parameters"]["Payload"]
    assert canary["component_name.$"] == "$.component.component_name"
    assert canary["component_version.$"] == "$.component.component_version"
    assert canary["configuration_merge"] == {"shadowShare": 0.25, "rolloutId.$": "$.rollout.id"}
    pass_branch = [c["Next"] for c in states["Did the canary pass?"]["Choices"]]
    assert pass_branch == ["Canary rejected", "Deploy to the fleet", "Canary reports incomplete"]
    assert states["Is the fleet deployment done?"]["Choices"][0]["Next"] == "Retrained and deployed"
    # A stop is a failure of the run like any other: the pipeline's notification, then Fail.
    for stop in ("Canary rejected", "Canary reports incomplete", "The canary deployment took "
                 "too long", "The fleet deployment took too long"):
        assert states[stop]["Next"] == "Notify the failure", stop
    for task in ("Deploy to the canary group", "Count healthy canaries", "Deploy to the fleet"):
        assert states[task]["Catch"][0]["Next"] == "Notify the failure", task
    # The pipeline's own straight-to-the-fleet states are gone.
    assert "Check the deployment" not in states and "Start polling the deployment" not in states


def test_with_canary_the_deployers_are_the_canarys(canary_built):
    template, rollout = canary_built.template, canary_built.rollout
    deployers = template.find_resources("AWS::Lambda::Function", {
        "Properties": {"Handler": "deployment_manager.handler"}})
    stack = canary_built.parts.stack
    ids = {stack.resolve(f.node.default_child.logical_id)
           for f in (rollout.canary_deployer, rollout.fleet_deployer)}
    assert set(deployers) == ids  # no deployer of the pipeline's own
    assert canary_built.pipeline.deployer_function is rollout.fleet_deployer
    states = all_states(canary_built.definition)
    invoked = {name: states[name]["Parameters"]["FunctionName"]
               for name in ("Deploy to the canary group", "Deploy to the fleet")}
    machine = canary_built.machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    for name, logical in (("Deploy to the canary group", rollout.canary_deployer),
                          ("Deploy to the fleet", rollout.fleet_deployer)):
        assert invoked[name] == "TOKEN"
        logical_id = stack.resolve(logical.node.default_child.logical_id)
        assert {"Fn::GetAtt": [logical_id, "Arn"]} in machine


def test_with_canary_the_machine_may_only_query_the_reports_table(canary_built):
    role = canary_built.machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = [s for r in canary_built.template.find_resources("AWS::IAM::Policy").values()
                  if {"Ref": role} in r["Properties"]["Roles"]
                  for s in r["Properties"]["PolicyDocument"]["Statement"]]
    dynamodb = [s for s in statements if "dynamodb:" in json.dumps(s["Action"])]
    table = canary_built.parts.stack.resolve(
        canary_built.rollout.reports_table.node.default_child.logical_id)
    assert dynamodb == [{"Action": "dynamodb:Query", "Effect": "Allow",
                         "Resource": {"Fn::GetAtt": [table, "Arn"]}}]


def test_with_canary_the_canary_devices_may_read_what_the_runs_compile(canary_built):
    stack = canary_built.parts.stack
    role = stack.resolve(canary_built.canary_fleet.token_exchange_role.node.default_child.logical_id)
    readable = json.dumps([s for r in canary_built.template.find_resources("AWS::IAM::Policy").values()
                           if {"Ref": role} in r["Properties"]["Roles"]
                           for s in r["Properties"]["PolicyDocument"]["Statement"]
                           if "s3:GetObject" in json.dumps(s["Action"])])
    for target in TARGETS:
        assert f"/compiled/Compile/{target}/*" in readable, target


def test_fails_when_the_canary_rolls_out_to_another_fleet(canary_built):
    parts = canary_built.parts
    other = EdgeFleet(parts.stack, "OtherFleet", fleet_name="other")
    with pytest.raises(ValueError, match=r"^canary must roll out to this pipeline's fleet "
                                         r"\(other\); got a CanaryRollout of retrain-fleet$"):
        RetrainPipeline(parts.stack, "Elsewhere", training_job=parts.training,
                        compilation=parts.compilation, component=parts.component, fleet=other,
                        canary=canary_built.rollout)


def test_fails_when_a_failure_threshold_is_given_with_a_canary(canary_built):
    parts = canary_built.parts
    with pytest.raises(ValueError, match=r"^failure_threshold_percent applies to a deployment "
                                         r"straight to the fleet; .*; got 10$"):
        RetrainPipeline(parts.stack, "Threshold", training_job=parts.training,
                        compilation=parts.compilation, component=parts.component,
                        fleet=parts.fleet, canary=canary_built.rollout,
                        failure_threshold_percent=10)


def test_fails_when_canary_is_not_a_canary_rollout(canary_built):
    parts = canary_built.parts
    with pytest.raises(ValueError, match=r"^canary must be a CanaryRollout; got 'digits-canary'$"):
        RetrainPipeline(parts.stack, "NotCanary", training_job=parts.training,
                        compilation=parts.compilation, component=parts.component,
                        fleet=parts.fleet, canary="digits-canary")


# ---------------------------------------------------------------------------------------
# Failures at synth


def test_fails_when_training_job_is_missing(built):
    with pytest.raises(ValueError, match=r"^training_job must be a TrainingJob .*; got None$"):
        RetrainPipeline(built.parts.stack, "NoTraining", training_job=None,
                        compilation=built.parts.compilation, component=built.parts.component,
                        fleet=built.parts.fleet)


def test_fails_when_compilation_is_empty(built):
    with pytest.raises(ValueError, match=r"^compilation must be an EdgeCompilationSet or a "
                                         r"non-empty list \(or mapping\) of EdgeCompilationJob "
                                         r"\(and NeoCompilationJob for endpoint targets\); "
                                         r"got \[\]$"):
        RetrainPipeline(built.parts.stack, "NoCompile", training_job=built.parts.training,
                        compilation=[], component=built.parts.component, fleet=built.parts.fleet)


def test_fails_when_a_device_target_is_compiled_by_sagemaker_neo(built):
    neo = NeoCompilationSet(built.parts.stack, "NeoDevices", bucket=built.parts.models,
                            model=built.parts.training, framework="XGBOOST", targets=["rasp4b"])
    with pytest.raises(ValueError, match=r"^compilation must compile device targets with "
                                         r"EdgeCompilationJob, whose output the runs publish to "
                                         r"the component; got SageMaker Neo jobs for rasp4b: Neo "
                                         r"writes DLR's format \(compiled.so, compiled_model.json, "
                                         r"compiled.params; no manifest.json\)"):
        RetrainPipeline(built.parts.stack, "NeoRetrain", training_job=built.parts.training,
                        compilation=neo, component=built.parts.component,
                        fleet=built.parts.fleet)


def test_endpoint_targets_compile_with_neo_after_the_device_builds(tmp_path):
    parts = base_stack(tmp_path, "Endpoint")
    neo = NeoCompilationJob(parts.stack, "NeoC5", bucket=parts.models, model=parts.training,
                            framework="XGBOOST", target="ml_c5")
    pipeline = RetrainPipeline(parts.stack, "Retrain", training_job=parts.training,
                               compilation=[parts.compilation["rasp4b"], neo],
                               component=parts.component, fleet=parts.fleet)
    template = synth_checked(parts.app, parts.stack)
    (machine,) = [m for k, m in template.find_resources("AWS::StepFunctions::StateMachine").items()
                  if k.startswith("Retrain")]
    states = definition_with_placeholders(machine)["States"]
    assert states["Compile for every target"]["Next"] == "Compile for the endpoints"
    assert [b["StartAt"] for b in states["Compile for every target"]["Branches"]] == \
        ["Start compilation for rasp4b"]
    endpoints = states["Compile for the endpoints"]
    assert endpoints["Next"] == "Publish the component version"
    assert endpoints["ResultPath"] == "$.endpoint_compiled"
    (branch,) = endpoints["Branches"]
    assert branch["States"]["Start compilation for ml_c5"]["Resource"] == \
        "arn:aws:states:::aws-sdk:sagemaker:createCompilationJob"
    # Only the device model is published: the publisher reads $.compiled.
    assert states["Publish the component version"]["Parameters"]["Payload"]["targets.$"] == \
        "$.compiled"
    assert pipeline.compilation_jobs == [parts.compilation["rasp4b"], neo]


def test_fails_when_component_has_no_bundle_for_a_target(tmp_path):
    parts = base_stack(tmp_path, "NoBundle")
    only_arm = SimpleNamespace(component_name="com.example.Digits",
                               runtime_bundle_assets={"aarch64": object()})
    with pytest.raises(ValueError, match=r"^component must have a device bundle for the "
                                         r"architecture of every compilation target; none for "
                                         r"x86_64 \(ml_c5\), x86_64-cuda \(ml_g4dn\)$"):
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


def step_functions_casing(monkeypatch) -> None:
    """Make moto's AWS SDK tasks take parameters and give results the way Step Functions does.

    Step Functions takes an AWS SDK task's parameters in PascalCase whatever the service's
    own casing, and gives the result back in PascalCase ("Use PascalCase for the parameter
    names": aws-cdk-lib, aws_stepfunctions_tasks.CallAwsService ``parameters``; the Step
    Functions developer guide, "AWS SDK service integrations"). moto 5.2.5 hands them to
    boto3 as written, which only works for services that are PascalCase already
    (SageMaker), not for CodeBuild's camelCase (``projectName``). The conversion is moto's
    own (``_to_boto_request`` / ``_from_boto_response``, against botocore's service model),
    switched on for AWS SDK tasks as Step Functions applies it.
    """
    import botocore.session
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_aws_sdk)

    models = botocore.session.get_session()

    def operation(task):
        action = task.resource.api_action
        return models.get_service_model(task._get_boto_service_name()).operation_model(
            action[0].upper() + action[1:])

    def parameters(self, params, boto_service_name=None, service_action_name=None):
        self._to_boto_request(params, operation(self).input_shape)

    def response(self, result, boto_service_name=None, service_action_name=None):
        self._from_boto_response(result, operation(self).output_shape)

    cls = state_task_service_aws_sdk.StateTaskServiceAwsSdk
    monkeypatch.setattr(cls, "_normalise_parameters", parameters)
    monkeypatch.setattr(cls, "_normalise_response", response)


@contextlib.contextmanager
def moto_machine(built, monkeypatch, functions: Sequence[str], reports: Optional[str] = None):
    """Creates the state machine in moto from the synthesized definition; yields a runner.

    ``functions``: the logical id prefixes of the Lambda functions it invokes; ``reports``:
    that of a canary's reports table, made in moto's DynamoDB (``.table``)."""
    step_functions_casing(monkeypatch)
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
        for prefix in functions:
            logical = logical_of(body, "AWS::Lambda::Function", prefix)
            arns[logical] = lam.create_function(
                FunctionName=prefix, Runtime="python3.11", Role=role, Handler="handler.handler",
                Code={"ZipFile": code.getvalue()})["FunctionArn"]
        topic = boto3.client("sns", region_name=REGION).create_topic(Name="alerts")["TopicArn"]
        refs = {logical_of(body, "AWS::SNS::Topic", "RetrainAlerts"): topic,
                logical_of(body, "AWS::S3::Bucket", "Models"): "models"}
        codebuild = boto3.client("codebuild", region_name=REGION)
        projects = {}
        for target in TARGETS:
            logical = logical_of(body, "AWS::CodeBuild::Project", f"Compile{target.replace('_', '')}Project")
            properties = body["Resources"][logical]["Properties"]
            projects[target] = codebuild.create_project(
                name=f"compile-{target}".replace("_", "-"),
                source={"type": "S3", "location": "assets/wheel.zip"},
                artifacts={"type": properties["Artifacts"]["Type"]},
                environment={"type": properties["Environment"]["Type"],
                             "image": properties["Environment"]["Image"],
                             "computeType": properties["Environment"]["ComputeType"]},
                serviceRole=f"arn:aws:iam::{ACCOUNT}:role/compile")["project"]["name"]
            refs[logical] = projects[target]
        table = None
        if reports is not None:
            table = boto3.resource("dynamodb", region_name=REGION).create_table(
                TableName="reports", BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "rollout_id", "KeyType": "HASH"},
                           {"AttributeName": "device", "KeyType": "RANGE"}],
                AttributeDefinitions=[{"AttributeName": "rollout_id", "AttributeType": "S"},
                                      {"AttributeName": "device", "AttributeType": "S"}])
            table_logical = logical_of(body, "AWS::DynamoDB::Table", reports)
            refs[table_logical] = "reports"
            arns[table_logical] = table.table_arn
        definition = Resolver(body, refs, arns)(built.machine["Properties"]["DefinitionString"])
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(name="retrain", definition=definition,
                                           roleArn=role)["stateMachineArn"]
        from moto.awslambda.utils import get_backend
        queue = get_backend(ACCOUNT, REGION).lambda_simple_results_queue

        def run(execution_input: dict, lambda_results: list, name: Optional[str] = None) -> dict:
            queue[:] = [json.dumps(r) for r in lambda_results]
            arn = sfn.start_execution(stateMachineArn=machine, input=json.dumps(execution_input),
                                      **({"name": name} if name else {}))["executionArn"]
            deadline = time.time() + 60
            while time.time() < deadline:
                described = sfn.describe_execution(executionArn=arn)
                if described["status"] != "RUNNING":
                    return described
                time.sleep(0.1)
            last = sfn.get_execution_history(executionArn=arn)["events"][-8:]
            raise AssertionError(
                f"the execution did not finish within 60 seconds; its last events: "
                f"{[(e['type'], e.get('stateEnteredEventDetails', {}).get('name')) for e in last]}")

        from moto.sns.models import sns_backends
        yield SimpleNamespace(run=run, sagemaker=boto3.client("sagemaker", region_name=REGION),
                              codebuild=codebuild, projects=projects, table=table,
                              sent=lambda: sns_backends[ACCOUNT][REGION].topics[topic].sent_notifications,
                              queue=queue)


@pytest.fixture()
def moto_run(built, monkeypatch):
    with moto_machine(built, monkeypatch, ("RetrainPublisher", "RetrainDeployer")) as runner:
        yield runner


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

    # One build of each target's project (moto's CodeBuild keeps no environment overrides:
    # what the build gets is asserted on the definition above).
    for target in TARGETS:
        (build_id,) = moto_run.codebuild.list_builds_for_project(
            projectName=moto_run.projects[target])["ids"]
        (build,) = moto_run.codebuild.batch_get_builds(ids=[build_id])["builds"]
        assert build["buildStatus"] == "SUCCEEDED"
    assert not moto_run.sagemaker.list_compilation_jobs()["CompilationJobSummaries"]
    assert output["compiled"] == [
        {"target": t, "model_uri": f"s3://models/compiled/Compile/{t}/{run_id}/model.tar.gz"}
        for t in TARGETS]
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
    # What the builds get as MODEL_URI ($.model.model_data_uri in the definition).
    assert output["model"] == {"model_data_uri": model}
    assert all(len(moto_run.codebuild.list_builds_for_project(projectName=p)["ids"]) == 1
               for p in moto_run.projects.values())


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


# ---------------------------------------------------------------------------------------
# A run through a canary rollout under moto's executor


CANARY_DEPLOYING = {"deployment_id": "canary-1", "done": False}
CANARY_DEPLOYED = {"deployment_id": "canary-1", "done": True, "succeeded": 2, "failed": 0}
FLEET_DEPLOYING = {"deployment_id": "fleet-1", "done": False}
FLEET_DEPLOYED = {"deployment_id": "fleet-1", "done": True, "succeeded": 40, "failed": 0}


@pytest.fixture()
def canary_run(canary_built, monkeypatch):
    with moto_machine(canary_built, monkeypatch,
                      ("RetrainPublisher", "RolloutCanaryDeployer", "RolloutFleetDeployer"),
                      reports="RolloutReports") as runner:
        yield runner


def report(table, rollout_id: str, device: str, decision: str) -> None:
    """A canary device's decision as the reports rule stores it: what the device publishes
    (``neo_edge_runtime.rollout.decision_message``, its own code) plus what the rule's SQL
    adds (``device`` from the topic, ``expires_at``)."""
    from neo_edge_runtime.rollout import decision_message

    message = decision_message(
        event="health" if decision in ("healthy", "rollback") else "shadow", decision=decision,
        device=device, rollout_id=rollout_id,
        model={"name": "digits", "version": "1.0.7", "id": "1.0.7-abc"},
        baseline={"name": "digits", "version": "1.0.6", "id": "1.0.6-def"}, reasons=[],
        figures={"agreement": 0.97, "requests": 100}, thresholds={"shadowShare": 0.25})
    item = json.loads(json.dumps(message), parse_float=Decimal)
    item.update(device=device, expires_at=int(time.time()) + 2592000)
    table.put_item(Item=item)


UPLOADED = {"trigger": "model", "model_data_uri": "s3://models/models/incoming/model.tar.gz"}


def test_run_with_healthy_canaries_reaches_the_fleet(canary_run):
    for device in ("canary-a", "canary-b"):
        report(canary_run.table, "retrain-pass", device, "healthy")
    done = canary_run.run(UPLOADED, [PUBLISHED, CANARY_DEPLOYING, CANARY_DEPLOYED, FLEET_DEPLOYING,
                                     FLEET_DEPLOYED], name="retrain-pass")
    assert done["status"] == "SUCCEEDED", done.get("cause")
    output = json.loads(done["output"])
    assert output["rollout"] == {"id": "retrain-pass"}
    assert output["reports"]["summary"] == {"healthy": 2, "failed": 0, "reported": 2,
                                            "devices": 2, "attempts": 1}
    assert output["fleet"] == {"deployment_id": "fleet-1", "done": True, "succeeded": 40,
                               "failed": 0}
    assert not canary_run.queue and not canary_run.sent()


def test_run_with_a_rejecting_canary_stops_before_the_fleet_and_notifies(canary_run):
    report(canary_run.table, "retrain-stop", "canary-a", "healthy")
    report(canary_run.table, "retrain-stop", "canary-b", "reject")
    done = canary_run.run(UPLOADED, [PUBLISHED, CANARY_DEPLOYING, CANARY_DEPLOYED],
                          name="retrain-stop")
    assert done["status"] == "FAILED" and done["error"] == "CanaryRejected"
    assert "1 of 2 canary devices rejected the new version" in done["cause"]
    assert not canary_run.queue  # the fleet's deployer was never invoked
    [(_, message, subject)] = [n[:3] for n in canary_run.sent()]
    assert subject == "neo-edge retraining failed"
    assert message.startswith("neo-edge retraining retrain-stop failed: CanaryRejected: 1 of 2 "
                              "canary devices rejected the new version")
