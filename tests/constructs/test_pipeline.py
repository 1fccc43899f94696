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
from neo_edge import (ArtifactSigningKey, EdgeCompilationSet, CanaryRollout, DeploymentComponent, EdgeCompilationJob, EdgeDeployment,
                      EdgeFleet,
                      ModelArtifactBucket, NeoCompilationJob, NeoCompilationSet,
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
    # Device targets by neo-edge's compiler in CodeBuild, the endpoint target by Neo.
    t.resource_count_is("Custom::NeoEdgeCompilationBuild", 1)
    t.resource_count_is("AWS::CodeBuild::Project", 1)
    t.resource_count_is("Custom::SageMakerCompilationJob", 1)
    t.resource_count_is("AWS::GreengrassV2::ComponentVersion", 1)
    t.resource_count_is("AWS::GreengrassV2::Deployment", 1)
    t.resource_count_is("AWS::IoT::ThingGroup", 1)
    t.resource_count_is("AWS::IoT::TopicRule", 2)  # results and summaries
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


def test_device_targets_compile_with_neo_edge_and_endpoint_targets_with_neo(built):
    jobs = built.pipeline.compilation_jobs
    assert list(jobs) == ["rasp4b", "ml_c5"]
    assert [type(j) for j in jobs.values()] == [EdgeCompilationJob, NeoCompilationJob]
    assert list(built.pipeline.compilation.jobs) == ["rasp4b"]
    assert list(built.pipeline.endpoint_compilation.jobs) == ["ml_c5"]
    (neo,) = built.default.find_resources("Custom::SageMakerCompilationJob").values()
    assert '"TargetDevice":"ml_c5"' in json.dumps(neo["Properties"]["Request"]).replace("\\", "")


def test_component_ships_every_device_target_on_the_fleet_topics(built):
    recipe = recipe_of(built.default)
    assert recipe["ComponentName"] == "com.neoedge.Digits"
    # ml_c5 (Neo's DLR format) is for the endpoint only.
    assert sorted(m["Name"] for m in recipe["Manifests"]) == ["rasp4b"]
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


def test_a_canary_fleet_puts_a_canary_rollout_before_the_fleet(bundles):
    app = cdk.App()
    stack = cdk.Stack(app, "WithCanary")
    canary_fleet = EdgeFleet(stack, "CanaryFleet", fleet_name="digits-canary")
    pipeline = NeoEdgePipeline(stack, "P", runtime_bundles=bundles, targets=["rasp4b"],
                               canary_fleet=canary_fleet)
    canary = pipeline.canary
    assert isinstance(canary, CanaryRollout) and pipeline.retraining.canary is canary
    assert canary.fleet is pipeline.fleet and canary.canary_fleet is canary_fleet
    assert canary.alert_topic is pipeline.telemetry.alert_topic
    assert canary.dashboard is pipeline.telemetry.dashboard
    template = synth_checked(app, stack)
    [machine] = [m for k, m in template.find_resources("AWS::StepFunctions::StateMachine").items()
                 if k.startswith("PRetraining")]
    definition = "".join(p for p in machine["Properties"]["DefinitionString"]["Fn::Join"][1]
                         if isinstance(p, str))
    assert '"Deploy to the canary group"' in definition


def test_without_a_canary_fleet_there_is_no_canary(built):
    assert built.pipeline.canary is None and built.pipeline.retraining.canary is None
    assert not built.default.find_resources("AWS::DynamoDB::Table")


# ---------------------------------------------------------------------------------------
# Signing


def _logical(construct) -> str:
    return cdk.Stack.of(construct).resolve(construct.node.default_child.logical_id)


def test_default_signs_with_a_kms_p256_signing_key(built):
    key = built.pipeline.signing_key
    assert isinstance(key, ArtifactSigningKey)
    assert built.pipeline.compilation.signing_key is key and built.pipeline.component.signing_key is key
    signing_keys = built.default.find_resources("AWS::KMS::Key", {"Properties": {
        "KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}})
    assert list(signing_keys) == [_logical(key.key)]
    # The replaced stack's pipeline signs too: nothing given decides otherwise.
    assert isinstance(built.custom.signing_key, ArtifactSigningKey)


def test_default_builds_pass_the_signing_flags(built):
    from neo_edge.edge_compilation import SIGNING_KMS_KEY_VARIABLE, SIGNING_PUBLIC_KEY_VARIABLE
    from neo_edge_runtime.compile.cloud import build_parser

    key = built.pipeline.signing_key
    (project,) = built.default.find_resources("AWS::CodeBuild::Project").values()
    spec = json.loads(project["Properties"]["Source"]["BuildSpec"])
    (command,) = spec["phases"]["build"]["commands"]
    parsed = build_parser().parse_args(command.split()[3:])
    assert (parsed.signing_kms_key, parsed.signing_public_key) == (
        f'"${SIGNING_KMS_KEY_VARIABLE}"', f'"${SIGNING_PUBLIC_KEY_VARIABLE}"')
    assert project["Properties"]["Environment"]["EnvironmentVariables"] == [
        {"Name": SIGNING_KMS_KEY_VARIABLE, "Type": "PLAINTEXT",
         "Value": {"Fn::GetAtt": [_logical(key.key), "Arn"]}},
        {"Name": SIGNING_PUBLIC_KEY_VARIABLE, "Type": "PLAINTEXT",
         "Value": {"Fn::GetAtt": [_logical(key.public_key_resource), "PublicKey"]}}]


def test_default_component_gives_devices_the_public_key(built):
    public_key = {"Fn::GetAtt": [_logical(built.pipeline.signing_key.public_key_resource),
                                 "PublicKey"]}
    component = next(iter(built.default.find_resources(
        "AWS::GreengrassV2::ComponentVersion").values()))
    assert public_key in component["Properties"]["InlineRecipe"]["Fn::Join"][1]
    config = recipe_of(built.default)["ComponentConfiguration"]["DefaultConfiguration"]
    assert config["signingPublicKey"] == "X" and config["allowUnsigned"] is False


def test_retraining_runs_keep_signing(built):
    """The runs start the same projects and override only MODEL_URI and OUTPUT_URI (CodeBuild
    keeps the project's other variables: botocore's codebuild model, StartBuild
    environmentVariablesOverride), and the versions they publish verify with the key."""
    machine = built.default.to_json()["Resources"][
        _logical(built.pipeline.retraining.state_machine)]
    definition = json.loads("".join(p if isinstance(p, str) else "X" for p in
                                    machine["Properties"]["DefinitionString"]["Fn::Join"][1]))

    def states(machine: dict) -> list:
        return [s for state in machine["States"].values()
                for s in [state, *(n for b in state.get("Branches", []) for n in states(b))]]

    starts = [s for s in states(definition)
              if str(s.get("Resource")).endswith(":states:::aws-sdk:codebuild:startBuild")]
    assert starts and all([v["Name"] for v in s["Parameters"]["EnvironmentVariablesOverride"]]
                          == ["MODEL_URI", "OUTPUT_URI"] for s in starts)
    (publisher,) = built.default.find_resources("AWS::Lambda::Function", {
        "Properties": {"Handler": "component_publisher.handler"}}).values()
    configuration = publisher["Properties"]["Environment"]["Variables"]["INFERENCE_CONFIGURATION"]
    public_key = {"Fn::GetAtt": [_logical(built.pipeline.signing_key.public_key_resource),
                                 "PublicKey"]}
    assert public_key in configuration["Fn::Join"][1]
    assert json.loads("".join(p if isinstance(p, str) else "X"
                              for p in configuration["Fn::Join"][1]))["signingPublicKey"] == "X"


def test_sign_artifacts_false_builds_unsigned_models(bundles):
    stack = cdk.Stack(cdk.App(), "Unsigned")
    pipeline = NeoEdgePipeline(stack, "P", runtime_bundles=bundles, targets=["rasp4b"],
                               sign_artifacts=False)
    assert pipeline.signing_key is None and pipeline.compilation.signing_key is None
    assert not [c for c in stack.node.find_all() if isinstance(c, ArtifactSigningKey)]
    assert "--signing" not in pipeline.compilation["rasp4b"].command
    config = pipeline.component.recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert config["signingPublicKey"] == "" and config["allowUnsigned"] is True


def _signed_parts(stack, bundles, key=None):
    models = ModelArtifactBucket(stack, "Models")
    compilation = EdgeCompilationSet(stack, "Compile", bucket=models, model="models/model.tar.gz",
                                     framework="XGBOOST", targets=["rasp4b"], signing_key=key)
    return models, compilation


def test_a_given_compilation_signs_with_its_own_key(stack, bundles):
    key = ArtifactSigningKey(stack, "Shared")
    models, compilation = _signed_parts(stack, bundles, key)
    pipeline = NeoEdgePipeline(stack, "P", runtime_bundles=bundles, bucket=models,
                               compilation=compilation)
    assert pipeline.signing_key is key and pipeline.component.signing_key is key
    assert [c for c in stack.node.find_all() if isinstance(c, ArtifactSigningKey)] == [key]


def test_a_given_unsigned_compilation_is_followed(stack, bundles):
    models, compilation = _signed_parts(stack, bundles)
    pipeline = NeoEdgePipeline(stack, "P", runtime_bundles=bundles, bucket=models,
                               compilation=compilation)
    assert pipeline.signing_key is None and pipeline.component.signing_key is None


def test_a_shared_signing_key_is_used_not_created(stack, bundles):
    key = ArtifactSigningKey(stack, "Shared")
    pipeline = NeoEdgePipeline(stack, "P", runtime_bundles=bundles, targets=["rasp4b"],
                               signing_key=key)
    assert pipeline.compilation.signing_key is key and pipeline.component.signing_key is key
    assert [c for c in stack.node.find_all() if isinstance(c, ArtifactSigningKey)] == [key]


# ---------------------------------------------------------------------------------------
# Replaced parts


def test_replaced_parts_are_used_not_created(built):
    t = built.replaced
    t.resource_count_is("AWS::S3::Bucket", 0)
    t.resource_count_is("AWS::IoT::ThingGroup", 1)
    t.resource_count_is("AWS::GreengrassV2::Deployment", 1)
    t.resource_count_is("AWS::IoT::TopicRule", 0)
    t.resource_count_is("Custom::SageMakerTrainingJob", 0)
    t.resource_count_is("Custom::SageMakerCompilationJob", 1)
    t.resource_count_is("Custom::NeoEdgeCompilationBuild", 1)
    assert built.custom.fleet is built.fleet and built.custom.deployment is built.deployment
    assert built.custom.training_job is None and built.custom.retraining is None


def test_given_deployment_gets_the_component_too(built):
    assert built.deployment.component_names == ["aws.greengrass.LogManager", "com.example.Custom"]


def test_model_key_is_compiled_from_the_given_bucket(built):
    jobs = built.replaced.find_resources("Custom::SageMakerCompilationJob")
    requests = [json.loads("".join(p if isinstance(p, str) else "X" for p in
                                   j["Properties"]["Request"]["Fn::Join"][1])) for j in jobs.values()]
    assert {r["InputConfig"]["S3Uri"] for r in requests} == {"s3://existing-models/models/model.tar.gz"}
    (build,) = built.replaced.find_resources("Custom::NeoEdgeCompilationBuild").values()
    request = json.loads(build["Properties"]["Request"])
    assert request["environmentVariablesOverride"][0] == {
        "name": "MODEL_URI", "value": "s3://existing-models/models/model.tar.gz",
        "type": "PLAINTEXT"}


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
    with pytest.raises(ValueError, match=r"^endpoint_target must be one of the endpoint targets "
                                         r"compiled by SageMaker Neo \(ml_c5\); got 'ml_m5'$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, endpoint_target="ml_m5")


def test_fails_when_endpoint_target_is_a_device_target(stack, bundles):
    with pytest.raises(ValueError, match=r"^endpoint_target must be one of the endpoint targets "
                                         r"compiled by SageMaker Neo \(ml_c5\); got 'rasp4b'$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, endpoint_target="rasp4b")


def test_fails_when_every_target_is_an_endpoint_target(stack, bundles):
    with pytest.raises(ValueError, match=r"^targets must include at least one device target .*; "
                                         r"got ml_c5, ml_m5$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, targets=["ml_c5", "ml_m5"])


def test_fails_when_compilation_is_a_sagemaker_neo_set(stack, bundles):
    models = ModelArtifactBucket(stack, "Models")
    neo = NeoCompilationSet(stack, "Neo", bucket=models, model="models/model.tar.gz",
                            framework="XGBOOST", targets=["rasp4b"])
    with pytest.raises(ValueError, match=r"^compilation must be an EdgeCompilationSet .*got a "
                                         r"NeoCompilationSet: SageMaker Neo writes DLR's format "
                                         r"\(compiled.so, compiled_model.json, compiled.params; "
                                         r"no manifest.json\)"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, compilation=neo, bucket=models)


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


def test_fails_when_signing_key_comes_with_sign_artifacts_false(stack, bundles):
    key = ArtifactSigningKey(stack, "Shared")
    with pytest.raises(ValueError, match=r"^signing_key was given with sign_artifacts=False; "
                                         r"give one or the other$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, signing_key=key,
                        sign_artifacts=False)


def test_fails_when_sign_artifacts_false_meets_a_signed_compilation(stack, bundles):
    models, compilation = _signed_parts(stack, bundles, ArtifactSigningKey(stack, "Shared"))
    with pytest.raises(ValueError, match=r"^sign_artifacts=False, but the compilation given "
                                         r"signs with a signing_key"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, bucket=models,
                        compilation=compilation, sign_artifacts=False)


def test_fails_when_signing_is_asked_of_an_unsigned_compilation(stack, bundles):
    models, compilation = _signed_parts(stack, bundles)
    with pytest.raises(ValueError, match=r"^sign_artifacts=True, but the compilation given has "
                                         r"no signing_key \(its builds would not sign, or its "
                                         r"devices not verify\)"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, bucket=models,
                        compilation=compilation, sign_artifacts=True)


def test_fails_when_the_keys_differ(stack, bundles):
    models, compilation = _signed_parts(stack, bundles, ArtifactSigningKey(stack, "Builds"))
    with pytest.raises(ValueError, match=r"^signing_key and the compilation given have "
                                         r"different signing keys; the builds must sign with "
                                         r"the key the devices verify with"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, bucket=models,
                        compilation=compilation, signing_key=ArtifactSigningKey(stack, "Other"))


def test_fails_when_inference_configuration_sets_the_public_key(stack, bundles):
    with pytest.raises(ValueError, match=r"^inference_configuration must not set "
                                         r"signingPublicKey: the devices get the public key of "
                                         r"the pipeline's signing key"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles,
                        inference_configuration={"signingPublicKey": "MFkw"})


def test_fails_when_sign_artifacts_is_not_a_bool(stack, bundles):
    with pytest.raises(ValueError, match=r"^sign_artifacts must be True, False or None; "
                                         r"got 'yes'$"):
        NeoEdgePipeline(stack, "P", runtime_bundles=bundles, sign_artifacts="yes")
