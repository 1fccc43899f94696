"""NeoEdgePipeline: the defaults wire every part; each part can be replaced."""

from __future__ import annotations

import json
import pathlib
from types import SimpleNamespace

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template

from checks import synth_checked
from neo_edge import (DeploymentComponent, EdgeDeployment, EdgeFleet, ModelArtifactBucket,
                      NeoEdgePipeline, TrainingJob, AlgorithmImage)


def make_bundle(folder: pathlib.Path) -> str:
    (folder / "neo_edge_runtime").mkdir(parents=True, exist_ok=True)
    (folder / "neo_edge_runtime" / "__init__.py").write_text("")
    (folder / "edge_inference.py").write_text(f"# {folder.name}\n")
    return str(folder)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {arch: make_bundle(root / arch) for arch in ("aarch64", "x86_64")}


@pytest.fixture(scope="module")
def built(bundles):
    app = cdk.App()
    # The defaults: a dozen lines of user code.
    default = cdk.Stack(app, "Default")
    pipeline = NeoEdgePipeline(default, "Digits", runtime_bundles=bundles, model_name="digits")
    # Every replaceable part replaced (or switched off).
    replaced = cdk.Stack(app, "Replaced")
    bucket = s3.Bucket.from_bucket_name(replaced, "Existing", "existing-models")
    fleet = EdgeFleet(replaced, "MyFleet", fleet_name="my-fleet")
    deployment = EdgeDeployment(replaced, "MyDeployment", fleet=fleet, components=[
        DeploymentComponent.public("aws.greengrass.LogManager", "2.3.7")])
    custom = NeoEdgePipeline(replaced, "Custom", runtime_bundles=bundles,
                             targets=["rasp4b", "ml_c5"], model="models/model.tar.gz",
                             bucket=bucket, fleet=fleet, deployment=deployment,
                             enable_telemetry=False, endpoint_target="ml_c5",
                             component_name="com.example.Custom")
    default_t, replaced_t = synth_checked(app, default, replaced)
    return SimpleNamespace(default=default_t, replaced=replaced_t, pipeline=pipeline,
                           custom=custom, fleet=fleet, deployment=deployment)


def recipe_of(template) -> dict:
    component = next(iter(template.find_resources("AWS::GreengrassV2::ComponentVersion").values()))
    parts = component["Properties"]["InlineRecipe"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "X" for p in parts))


def training_request(template) -> dict:
    job = next(iter(template.find_resources("Custom::SageMakerTrainingJob").values()))
    parts = job["Properties"]["Request"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "X" for p in parts))


# ---------------------------------------------------------------------------------------
# Defaults


def test_defaults_create_every_part(built):
    t = built.default
    t.resource_count_is("AWS::S3::Bucket", 2)  # artifacts + their access logs
    t.resource_count_is("Custom::SageMakerTrainingJob", 1)
    t.resource_count_is("Custom::SageMakerCompilationJob", 3)
    t.resource_count_is("AWS::GreengrassV2::ComponentVersion", 1)
    t.resource_count_is("AWS::GreengrassV2::Deployment", 1)
    t.resource_count_is("AWS::IoT::ThingGroup", 1)
    t.resource_count_is("AWS::IoT::TopicRule", 1)
    t.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    t.resource_count_is("AWS::SageMaker::Endpoint", 0)
    # The retraining pipeline, next to the job provider's own waiter.
    t.resource_count_is("AWS::StepFunctions::StateMachine", 2)


def test_default_training_is_builtin_xgboost_on_the_train_prefix(built):
    request = training_request(built.default)
    assert request["HyperParameters"] == {"num_round": "100"}
    [channel] = request["InputDataConfig"]
    assert channel["ChannelName"] == "train" and channel["ContentType"] == "text/csv"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"].endswith("/datasets/train/")
    assert "sagemaker-xgboost:1.7-1" in request["AlgorithmSpecification"]["TrainingImage"]


def test_component_ships_every_target_on_the_fleet_topics(built):
    recipe = recipe_of(built.default)
    assert recipe["ComponentName"] == "com.neoedge.Digits"
    assert sorted(m["Name"] for m in recipe["Manifests"]) == ["jetson_xavier", "ml_c5", "rasp4b"]
    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert config["topicPrefix"] == built.pipeline.fleet.topic_prefix


def test_deployment_sends_the_component_to_the_fleet(built):
    built.default.has_resource_properties("AWS::GreengrassV2::Deployment", {
        "Components": {"com.neoedge.Digits": Match.any_value()},
        "DeploymentPolicies": Match.object_like({"FailureHandlingPolicy": "ROLLBACK"})})


def test_telemetry_and_retraining_share_one_alert_topic(built):
    built.default.resource_count_is("AWS::SNS::Topic", 1)
    topic = built.pipeline.telemetry.alert_topic
    assert built.pipeline.retraining.alert_topic is topic


def test_telemetry_watches_the_model(built):
    built.default.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "InferenceLatency", "Dimensions": [{"Name": "ModelName", "Value": "digits"}]})


def _deployment_failure_detail(template) -> dict:
    (pattern,) = [r["Properties"]["EventPattern"]
                  for r in template.find_resources("AWS::Events::Rule").values()
                  if r["Properties"]["EventPattern"].get("detail-type")
                  == ["Greengrass V2 Effective Deployment Status Change"]]
    return pattern["detail"]


def test_with_retraining_every_deployment_failure_alerts(built):
    # The retraining pipeline's deployments get their ids when it runs.
    assert "deploymentId" not in _deployment_failure_detail(built.default)


def test_without_retraining_telemetry_watches_its_deployment(bundles):
    stack = cdk.Stack(cdk.App(), "Compiled")
    pipeline = NeoEdgePipeline(stack, "P", runtime_bundles=bundles, model="models/model.tar.gz",
                               targets=["rasp4b"])
    assert pipeline.retraining is None
    detail = _deployment_failure_detail(Template.from_stack(stack))
    assert detail["deploymentId"] == [stack.resolve(pipeline.deployment.deployment_id)]


def test_retraining_reuses_the_parts(built):
    pipeline = built.pipeline
    assert pipeline.retraining.training_job is pipeline.training_job
    assert pipeline.retraining.compilation_jobs == list(pipeline.compilation.jobs.values())
    built.default.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "component_publisher.handler",
        "Environment": {"Variables": Match.object_like({"COMPONENT_NAME": "com.neoedge.Digits"})}})


# ---------------------------------------------------------------------------------------
# Replaced parts


def test_replaced_parts_are_used_not_created(built):
    t = built.replaced
    t.resource_count_is("AWS::S3::Bucket", 0)
    t.resource_count_is("AWS::IoT::ThingGroup", 1)
    t.resource_count_is("AWS::GreengrassV2::Deployment", 1)
    t.resource_count_is("AWS::IoT::TopicRule", 0)
    t.resource_count_is("Custom::SageMakerTrainingJob", 0)
    t.resource_count_is("Custom::SageMakerCompilationJob", 2)
    assert built.custom.fleet is built.fleet and built.custom.deployment is built.deployment
    assert built.custom.training_job is None and built.custom.retraining is None


def test_given_deployment_gets_the_component_too(built):
    assert built.deployment.component_names == ["aws.greengrass.LogManager", "com.example.Custom"]


def test_model_key_is_compiled_from_the_given_bucket(built):
    jobs = built.replaced.find_resources("Custom::SageMakerCompilationJob")
    requests = [json.loads("".join(p if isinstance(p, str) else "X" for p in
                                   j["Properties"]["Request"]["Fn::Join"][1])) for j in jobs.values()]
    assert {r["InputConfig"]["S3Uri"] for r in requests} == {"s3://existing-models/models/model.tar.gz"}


def test_endpoint_serves_the_ml_c5_model(built):
    built.replaced.has_resource_properties("AWS::SageMaker::EndpointConfig", {
        "ProductionVariants": [Match.object_like({"InstanceType": "ml.c5.xlarge"})]})


# ---------------------------------------------------------------------------------------
# Failures


@pytest.fixture()
def stack():
    return cdk.Stack(cdk.App(), "Bad")


def test_fails_when_runtime_bundles_are_missing(stack):
    with pytest.raises(ValueError, match=r"^runtime_bundles is required .*; got none$"):
        NeoEdgePipeline(stack, "P")


def test_fails_when_model_and_training_job_are_both_given(stack, bundles):
    models = ModelArtifactBucket(stack, "Models")
    job = TrainingJob(stack, "Train", bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                      input_channels={"train": "data/"})
    with pytest.raises(ValueError, match=r"^model and training_job are two sources of the model; "
                                         r"give one \(got model 'm.tar.gz' and a training_job\)$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, model="m.tar.gz", training_job=job)


def test_fails_when_deployment_is_given_without_its_fleet(stack, bundles):
    fleet = EdgeFleet(stack, "Fleet")
    deployment = EdgeDeployment(stack, "Deployment", fleet=fleet)
    with pytest.raises(ValueError, match=r"^deployment needs the fleet it deploys to: pass fleet= too$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, deployment=deployment)


def test_fails_when_endpoint_target_is_not_compiled(stack, bundles):
    with pytest.raises(ValueError, match=r"^endpoint_target must be one of the compiled targets "
                                         r"\(rasp4b, jetson_xavier, ml_c5\); got 'ml_m5'$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, endpoint_target="ml_m5")


def test_fails_when_retraining_is_asked_without_training(stack, bundles):
    with pytest.raises(ValueError, match=r"^enable_retraining needs a training job to rerun; "
                                         r"got model 'm.tar.gz'"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, model="m.tar.gz",
                        enable_retraining=True)


def test_fails_when_component_name_is_invalid(stack, bundles):
    with pytest.raises(ValueError, match=r"^component_name must be letters, digits, '-', '_' and "
                                         r"'.'; got 'com example'$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, component_name="com example")


def test_fails_when_fleet_props_come_with_a_fleet(stack, bundles):
    fleet = EdgeFleet(stack, "Fleet")
    with pytest.raises(ValueError, match=r"^fleet_name, thing_names and fleet_provisioning "
                                         r"configure the fleet created here"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, fleet=fleet, fleet_name="other")


def test_fails_when_telemetry_is_given_and_switched_off(stack, bundles):
    with pytest.raises(ValueError, match=r"^telemetry was given with enable_telemetry=False"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, telemetry=object(),
                        enable_telemetry=False)


def test_fails_when_a_target_is_unknown(stack, bundles):
    with pytest.raises(ValueError, match=r"rasp5"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, targets=["rasp5"])
