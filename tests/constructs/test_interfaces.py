"""Interfaces and importers: what a second stack, or a second app, needs from our resources.

One app, two stacks, passing constructs as Python objects (CDK makes the exports and
imports); and the same second stack built from names only, as a second app would.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match

from checks import synth_checked
from neo_edge import (CompiledModel, DeploymentComponent, EdgeDeployment, EdgeFleet,
                      EdgeInferenceComponent, EdgeLambdaComponent, EdgeTelemetry,
                      ICompilationOutput, IEdgeComponent, IEdgeDeployment, IEdgeFleet,
                      IModelArtifactBucket, IRetrainPipeline, ModelArtifactBucket,
                      RetrainPipeline, TargetDevice)
from neo_edge._lambda import bundled_function

from test_component import make_artifact, make_bundle

ACCOUNT = "123456789012"
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/cameras-token-exchange"
TOPIC_ARN = f"arn:aws:sns:us-east-1:{ACCOUNT}:cameras-alerts"
MACHINE_ARN = f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:retrain"
MODEL_KEY = "compiled/rasp4b/model.zip"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("interfaces")
    return SimpleNamespace(rasp4b=make_artifact(root / "rasp4b", "rasp4b"),
                           bundles={"aarch64": make_bundle(root / "bundle")})


def policies_of(template, role_ref) -> list:
    """The statements of every AWS::IAM::Policy attached to ``role_ref`` (a Ref or a name)."""
    return [s for p in template.find_resources("AWS::IAM::Policy").values()
            if role_ref in p["Properties"]["Roles"]
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def join_tail(value) -> str:
    """The literal end of a value CDK rendered as Fn::Join."""
    return value["Fn::Join"][1][-1] if isinstance(value, dict) else value


def recipe_parts(template) -> list:
    (component,) = [r for r in template.find_resources("AWS::GreengrassV2::ComponentVersion").values()
                    if "InlineRecipe" in r["Properties"]]
    body = component["Properties"]["InlineRecipe"]
    return body["Fn::Join"][1] if isinstance(body, dict) else [body]


# ---------------------------------------------------------------------------------------
# One app, two stacks: constructs passed as objects


@pytest.fixture(scope="module")
def two_stacks(files):
    app = cdk.App()
    shared = cdk.Stack(app, "Shared")
    models = ModelArtifactBucket(shared, "Models")
    fleet = EdgeFleet(shared, "Fleet", fleet_name="cameras", artifact_bucket=models,
                      artifact_prefix="compiled/")

    edge = cdk.Stack(app, "Edge")
    classifier = EdgeInferenceComponent(
        edge, "Classifier", component_name="com.example.Classifier",
        models=[CompiledModel.from_s3(models.bucket, MODEL_KEY, "rasp4b")],
        runtime_bundles=files.bundles)
    fn = bundled_function(edge, "Fn", "sagemaker_job", include_powertools=False)
    camera = EdgeLambdaComponent(edge, "Camera", component_name="com.example.Camera",
                                 function_version=fn.current_version)
    deployment = EdgeDeployment(edge, "Deployment", fleet=fleet, components=[classifier, camera])
    EdgeTelemetry(edge, "Telemetry", fleet=fleet, results_bucket=models.bucket,
                  model_names=["digits"], deployment=deployment)
    shared_template, edge_template = synth_checked(app, shared, edge)
    return SimpleNamespace(app=app, shared=shared, edge=edge, models=models, fleet=fleet,
                           classifier=classifier, camera=camera, deployment=deployment,
                           shared_template=shared_template, edge_template=edge_template)


def test_constructs_satisfy_their_interfaces(two_stacks):
    assert isinstance(two_stacks.models, IModelArtifactBucket)
    assert isinstance(two_stacks.fleet, IEdgeFleet)
    assert isinstance(two_stacks.classifier, IEdgeComponent)
    assert isinstance(two_stacks.camera, IEdgeComponent)
    assert isinstance(two_stacks.deployment, IEdgeDeployment)
    assert two_stacks.deployment.fleet is two_stacks.fleet


def test_retrain_pipeline_satisfies_its_interface(tmp_path):
    from test_retrain import base_stack
    parts = base_stack(tmp_path, "RetrainInterface")
    pipeline = RetrainPipeline(parts.stack, "Retrain", training_job=parts.training,
                               compilation=parts.compilation, component=parts.component,
                               fleet=parts.fleet)
    assert isinstance(pipeline, IRetrainPipeline)
    assert parts.stack.resolve(pipeline.state_machine_arn) == {
        "Ref": parts.stack.resolve(pipeline.state_machine.node.default_child.logical_id)}


def test_compilation_outputs_satisfy_their_interface():
    from neo_edge import NeoCompilationJob
    stack = cdk.Stack(cdk.App(), "Jobs")
    job = NeoCompilationJob(stack, "Job", bucket=ModelArtifactBucket(stack, "Models"),
                            model="models/model.tar.gz", framework="XGBOOST", target="rasp4b")
    assert isinstance(job, ICompilationOutput)
    # Any object with the two members does, as before.
    assert isinstance(SimpleNamespace(compiled_model_uri="s3://b/m.tar.gz", target="rasp4b"),
                      ICompilationOutput)


def test_cross_stack_deployment_targets_the_fleet_by_its_literal_name(two_stacks):
    (deployment,) = two_stacks.edge_template.find_resources("AWS::GreengrassV2::Deployment").values()
    assert join_tail(deployment["Properties"]["TargetArn"]) == ":thinggroup/cameras"
    assert deployment["Properties"]["Components"] == {
        "com.example.Camera": {"ComponentVersion": two_stacks.camera.component_version},
        "com.example.Classifier": {"ComponentVersion": two_stacks.classifier.component_version}}
    assert two_stacks.shared in two_stacks.edge.dependencies


def test_cross_stack_recipe_imports_the_bucket_name_the_shared_stack_exports(two_stacks):
    imports = [p["Fn::ImportValue"] for p in recipe_parts(two_stacks.edge_template)
               if isinstance(p, dict) and "Fn::ImportValue" in p]
    outputs = two_stacks.shared_template.to_json()["Outputs"]
    exported = {o["Export"]["Name"]: o["Value"] for o in outputs.values() if "Export" in o}
    (name,) = imports
    bucket_id = two_stacks.shared.resolve(two_stacks.models.bucket.node.default_child.logical_id)
    assert exported[name] == {"Ref": bucket_id}


def test_cross_stack_telemetry_writes_to_the_shared_bucket_through_imports(two_stacks):
    streams = two_stacks.edge_template.find_resources("AWS::KinesisFirehose::DeliveryStream")
    assert streams
    for stream in streams.values():  # results and summaries, into the other stack's bucket
        destination = stream["Properties"]["ExtendedS3DestinationConfiguration"]
        assert list(destination["BucketARN"]) == ["Fn::ImportValue"]


def test_cross_stack_fleet_role_reads_the_edge_stacks_artifacts(two_stacks):
    role_id = two_stacks.shared.resolve(
        two_stacks.fleet.token_exchange_role.node.default_child.logical_id)
    statements = policies_of(two_stacks.shared_template, {"Ref": role_id})
    exact = [s for s in statements if s["Action"] == "s3:GetObject" and isinstance(s["Resource"], list)]
    (grant,) = exact
    tails = [join_tail(r) for r in grant["Resource"]]
    # the model in the shared bucket and the device bundle asset, each by its exact key
    assert len(tails) == 2 and f"/{MODEL_KEY}" in tails
    assert all(t.endswith(".zip") and "*" not in t for t in tails)


def test_cross_stack_compilation_writes_to_the_shared_bucket():
    """The job role's prefix wildcards are acknowledged as the other stack's imports."""
    from neo_edge import NeoCompilationJob
    app = cdk.App()
    shared = cdk.Stack(app, "Shared")
    models = ModelArtifactBucket(shared, "Models")
    jobs = cdk.Stack(app, "Jobs")
    job = NeoCompilationJob(jobs, "Job", bucket=models, model="models/model.tar.gz",
                            framework="XGBOOST", target="rasp4b")
    _, template = synth_checked(app, shared, jobs)
    role_id = jobs.resolve(job.role.node.default_child.logical_id)
    statements = policies_of(template, {"Ref": role_id})
    put = [s for s in statements if s["Action"] == ["s3:PutObject", "s3:AbortMultipartUpload"]]
    (resource,) = [s["Resource"] for s in put]
    assert list(resource["Fn::Join"][1][0]) == ["Fn::ImportValue"]


# ---------------------------------------------------------------------------------------
# A second app: the edge stack built from names only


@pytest.fixture(scope="module")
def second_app(files):
    app = cdk.App()
    stack = cdk.Stack(app, "Edge")
    key = kms.Key.from_key_arn(stack, "ModelsKey", KEY_ARN)
    models = ModelArtifactBucket.from_bucket_name(stack, "Models", "models-bucket",
                                                  encryption_key=key)
    role = iam.Role.from_role_arn(stack, "TokenExchangeRole", ROLE_ARN)
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", "cameras", token_exchange_role=role)
    classifier = EdgeInferenceComponent(
        stack, "Classifier", component_name="com.example.Classifier",
        models=[CompiledModel.from_s3(models.bucket, MODEL_KEY, "rasp4b")],
        runtime_bundles=files.bundles)
    logger = EdgeLambdaComponent.from_component_version(stack, "Logger", "com.example.Logger",
                                                        "1.2.3")
    deployment = EdgeDeployment(stack, "Deployment", fleet=fleet, components=[classifier, logger])
    alerts = sns.Topic.from_topic_attributes(stack, "Alerts", topic_arn=TOPIC_ARN, key_arn=KEY_ARN)
    EdgeTelemetry(stack, "Telemetry", fleet=fleet, results_bucket=models.bucket,
                  model_names=["digits"], deployment=deployment, alert_topic=alerts)
    template = synth_checked(app, stack)
    return SimpleNamespace(template=template, stack=stack, models=models, fleet=fleet,
                           classifier=classifier, logger=logger, deployment=deployment)


def test_importers_satisfy_the_interfaces(second_app):
    assert isinstance(second_app.models, IModelArtifactBucket)
    assert isinstance(second_app.fleet, IEdgeFleet)
    assert isinstance(second_app.logger, IEdgeComponent)


def test_second_app_deploys_to_the_imported_fleet(second_app):
    (deployment,) = second_app.template.find_resources("AWS::GreengrassV2::Deployment").values()
    props = deployment["Properties"]
    assert join_tail(props["TargetArn"]) == ":thinggroup/cameras"
    assert props["Components"] == {
        "com.example.Classifier": {"ComponentVersion": second_app.classifier.component_version},
        "com.example.Logger": {"ComponentVersion": "1.2.3"}}
    assert props["DeploymentName"].startswith("cameras-")


def test_second_app_imports_nothing_and_names_the_bucket(second_app):
    body = json.dumps(second_app.template.to_json())
    assert "Fn::ImportValue" not in body
    parts = recipe_parts(second_app.template)
    assert any(isinstance(p, str) and f"s3://models-bucket/{MODEL_KEY}" in p for p in parts)


def test_second_app_grants_the_imported_role_its_components_artifacts(second_app):
    statements = policies_of(second_app.template, "cameras-token-exchange")
    (read,) = [s for s in statements if s["Action"] == "s3:GetObject"]
    tails = [join_tail(r) for r in read["Resource"]]
    assert len(tails) == 2 and f":s3:::models-bucket/{MODEL_KEY}" in tails
    assert all(t.endswith(".zip") for t in tails)
    assert {"Action": "kms:Decrypt", "Effect": "Allow", "Resource": KEY_ARN} in statements


def test_second_app_telemetry_alerts_the_imported_topic(second_app):
    alarms = second_app.template.find_resources("AWS::CloudWatch::Alarm")
    assert alarms and all(a["Properties"]["AlarmActions"] == [TOPIC_ARN] for a in alarms.values())


def test_imported_component_grants_nothing(second_app):
    role = iam.Role.from_role_arn(second_app.stack, "Other", ROLE_ARN)
    assert second_app.logger.grant_artifacts_read(role) is None
    assert join_tail(second_app.stack.resolve(second_app.logger.component_arn)) == (
        ":components:com.example.Logger:versions:1.2.3")


# ---------------------------------------------------------------------------------------
# Importers one by one


def test_imported_bucket_used_by_a_fleet_grants_on_its_name():
    app = cdk.App()
    stack = cdk.Stack(app, "Bucket")
    models = ModelArtifactBucket.from_bucket_name(stack, "Models", "models-bucket",
                                                  encryption_key=kms.Key.from_key_arn(
                                                      stack, "Key", KEY_ARN))
    fleet = EdgeFleet(stack, "Fleet", fleet_name="cameras", artifact_bucket=models,
                      artifact_prefix="compiled/")
    template = synth_checked(app, stack)
    role_id = stack.resolve(fleet.token_exchange_role.node.default_child.logical_id)
    statements = policies_of(template, {"Ref": role_id})
    assert [join_tail(s["Resource"]) for s in statements if s["Action"] == "s3:GetObject"] == [
        ":s3:::models-bucket/compiled/*"]
    assert {"Action": "kms:Decrypt", "Effect": "Allow", "Resource": KEY_ARN} in statements
    template.resource_count_is("AWS::S3::Bucket", 0)
    assert models.s3_uri() == "s3://models-bucket"
    assert stack.resolve(models.s3_uri("a/b")) == "s3://models-bucket/a/b"


def test_bucket_imported_by_arn_has_its_name():
    stack = cdk.Stack(cdk.App(), "Arn")
    models = ModelArtifactBucket.from_bucket_arn(stack, "Models", "arn:aws:s3:::models-bucket")
    assert models.bucket_name == "models-bucket" and models.encryption_key is None


def test_imported_bucket_grants_read_under_a_prefix():
    stack = cdk.Stack(cdk.App(), "Grants")
    models = ModelArtifactBucket.from_bucket_name(stack, "Models", "models-bucket")
    role = iam.Role(stack, "Reader", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    models.grant_read_models(role, "compiled/")
    (statement,) = stack.resolve(role.node.find_child("DefaultPolicy").document.to_json())["Statement"]
    assert [join_tail(r) for r in statement["Resource"]] == [
        ":s3:::models-bucket", ":s3:::models-bucket/compiled/*"]


def test_imported_fleet_arn_is_formatted_in_this_stack():
    stack = cdk.Stack(cdk.App(), "Arns", env=cdk.Environment(account=ACCOUNT, region="eu-west-1"))
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", "cameras", topic_prefix="plant/line-1")
    assert stack.resolve(fleet.thing_group_arn) == {"Fn::Join": ["", [
        "arn:", {"Ref": "AWS::Partition"}, f":iot:eu-west-1:{ACCOUNT}:thinggroup/cameras"]]}
    assert (fleet.fleet_name, fleet.thing_group_name, fleet.topic_prefix,
            fleet.token_exchange_role) == ("cameras", "cameras", "plant/line-1", None)


def test_imported_fleet_grants_deploy_and_describe():
    stack = cdk.Stack(cdk.App(), "FleetGrants")
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", "cameras")
    role = iam.Role(stack, "Deployer", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    fleet.grant_deploy(role)
    fleet.grant_describe(role)
    fleet.grant_publish_to_devices(role)
    statements = stack.resolve(role.node.find_child("DefaultPolicy").document.to_json())["Statement"]
    deploy, describe, publish = statements
    assert "greengrass:CreateDeployment" in deploy["Action"]
    assert join_tail(deploy["Resource"][0]) == ":thinggroup/cameras"
    assert join_tail(describe["Resource"]) == ":thinggroup/cameras"
    assert join_tail(publish["Resource"]) == ":topic/neo-edge/*"


def test_imported_fleet_with_role_allows_artifact_read_under_a_prefix():
    app = cdk.App()
    stack = cdk.Stack(app, "WithRole")
    role = iam.Role.from_role_arn(stack, "TokenExchangeRole", ROLE_ARN)
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", "cameras", token_exchange_role=role)
    models = ModelArtifactBucket.from_bucket_name(stack, "Models", "models-bucket",
                                                  encryption_key=kms.Key.from_key_arn(
                                                      stack, "Key", KEY_ARN))
    assert fleet.allow_artifact_read(models, "compiled/*").success
    template = synth_checked(app, stack)  # the prefix wildcard is acknowledged on that role
    statements = policies_of(template, "cameras-token-exchange")
    assert [join_tail(s["Resource"]) for s in statements if s["Action"] == "s3:GetObject"] == [
        ":s3:::models-bucket/compiled/*"]


def test_imported_fleet_without_role_deploys_without_artifact_grants(files):
    app = cdk.App()
    stack = cdk.Stack(app, "NoRole")
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", "cameras")
    classifier = EdgeInferenceComponent(stack, "Classifier", component_name="com.example.Classifier",
                                        models=[files.rasp4b], runtime_bundles=files.bundles)
    EdgeDeployment(stack, "Deployment", fleet=fleet, components=[classifier])
    template = synth_checked(app, stack)
    template.resource_count_is("AWS::GreengrassV2::Deployment", 1)
    template.resource_count_is("AWS::IAM::Policy", 0)


def test_an_imported_fleet_counts_for_the_one_deployment_per_fleet_check():
    stack = cdk.Stack(cdk.App(), "Twice")
    EdgeDeployment(stack, "First", fleet=EdgeFleet(stack, "Fleet", fleet_name="cameras"),
                   components=[DeploymentComponent.public("aws.greengrass.Cli", "2.14.0")])
    again = EdgeFleet.from_thing_group_name(stack, "Imported", "cameras")
    with pytest.raises(ValueError, match=r"^fleet cameras already has a deployment \(Twice/First\)"):
        EdgeDeployment(stack, "Second", fleet=again,
                       components=[DeploymentComponent.public("aws.greengrass.Cli", "2.14.0")])


def test_public_component_arn_has_the_aws_account():
    stack = cdk.Stack(cdk.App(), "Public")
    cli = EdgeInferenceComponent.from_component_version(stack, "Cli", "aws.greengrass.Cli", "2.14.0")
    assert join_tail(stack.resolve(cli.component_arn)) == (
        ":aws:components:aws.greengrass.Cli:versions:2.14.0")


def test_imported_deployment_narrows_telemetry_to_its_id():
    app = cdk.App()
    stack = cdk.Stack(app, "Watch")
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", "cameras")
    deployment = EdgeDeployment.from_deployment_id(stack, "Deployment", "a1b2c3d4-5678-90ab", fleet=fleet)
    assert isinstance(deployment, IEdgeDeployment)
    assert (deployment.deployment_name, deployment.fleet) == (None, fleet)
    key = kms.Key.from_key_arn(stack, "Key", KEY_ARN)
    results = ModelArtifactBucket.from_bucket_name(stack, "Results", "results-bucket",
                                                   encryption_key=key)
    EdgeTelemetry(stack, "Telemetry", fleet=fleet, results_bucket=results.bucket,
                  model_names=["digits"], deployment=deployment)
    template = synth_checked(app, stack)
    template.has_resource_properties("AWS::Events::Rule", {"EventPattern": Match.object_like({
        "detail": {"coreDeviceExecutionStatus": ["FAILED", "REJECTED", "TIMED_OUT"],
                   "deploymentId": ["a1b2c3d4-5678-90ab"]}})})
    template.has_resource_properties("AWS::IoT::TopicRule", {"TopicRulePayload": Match.object_like({
        "Sql": "SELECT VALUE results FROM 'neo-edge/+/+' "
               "WHERE (topic(3) = 'results' OR topic(3) = 'errors') AND device = topic(2)"})})


def test_imported_retrain_pipeline_grants_start_and_gives_metrics():
    stack = cdk.Stack(cdk.App(), "Start")
    pipeline = RetrainPipeline.from_state_machine_arn(stack, "Retrain", MACHINE_ARN)
    assert isinstance(pipeline, IRetrainPipeline)
    role = iam.Role(stack, "Starter", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    pipeline.grant_start_execution(role)
    (statement,) = stack.resolve(role.node.find_child("DefaultPolicy").document.to_json())["Statement"]
    assert statement == {"Action": "states:StartExecution", "Effect": "Allow", "Resource": MACHINE_ARN}
    assert pipeline.metric_failed().dimensions == {"StateMachineArn": MACHINE_ARN}
    assert pipeline.metric_succeeded().metric_name == "ExecutionsSucceeded"


def test_importers_take_tokens():
    app = cdk.App()
    stack = cdk.Stack(app, "Tokens")
    group = cdk.CfnParameter(stack, "Group").value_as_string
    version = cdk.CfnParameter(stack, "Version").value_as_string
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", group)
    component = EdgeLambdaComponent.from_component_version(stack, "C", "com.example.C", version)
    models = ModelArtifactBucket.from_bucket_name(
        stack, "Models", cdk.CfnParameter(stack, "Bucket").value_as_string)
    pipeline = RetrainPipeline.from_state_machine_arn(
        stack, "Retrain", cdk.CfnParameter(stack, "Arn").value_as_string)
    cdk.CfnOutput(stack, "ModelsUri", value=models.s3_uri())
    cdk.CfnOutput(stack, "Pipeline", value=pipeline.state_machine_arn)
    EdgeDeployment(stack, "Deployment", fleet=fleet, components=[component])
    template = synth_checked(app, stack)
    outputs = template.to_json()["Outputs"]
    assert outputs["ModelsUri"]["Value"] == {"Fn::Join": ["", ["s3://", {"Ref": "Bucket"}]]}
    assert outputs["Pipeline"]["Value"] == {"Ref": "Arn"}
    (deployment,) = template.find_resources("AWS::GreengrassV2::Deployment").values()
    assert deployment["Properties"]["Components"] == {
        "com.example.C": {"ComponentVersion": {"Ref": "Version"}}}
    assert deployment["Properties"]["TargetArn"]["Fn::Join"][1][-1] == {"Ref": "Group"}


# ---------------------------------------------------------------------------------------
# Refusals


def test_fails_when_thing_group_name_has_spaces():
    with pytest.raises(ValueError) as exc:
        EdgeFleet.from_thing_group_name(cdk.Stack(cdk.App(), "S"), "Fleet", "x y")
    assert str(exc.value) == ("thing_group_name must be 1 to 128 letters, digits, ':', '-' or '_'; "
                              "got 'x y'")


def test_fails_when_thing_group_name_is_too_long():
    with pytest.raises(ValueError, match=r"^thing_group_name must be 1 to 128 .*; got 'aaa"):
        EdgeFleet.from_thing_group_name(cdk.Stack(cdk.App(), "S"), "Fleet", "a" * 129)


def test_fails_when_imported_fleet_topic_prefix_has_a_wildcard():
    with pytest.raises(ValueError) as exc:
        EdgeFleet.from_thing_group_name(cdk.Stack(cdk.App(), "S"), "Fleet", "cameras",
                                        topic_prefix="neo-edge/#")
    assert str(exc.value) == ("topic_prefix must be topic levels of letters, digits, '-' and '_' "
                              "without wildcards or a leading '$'; got 'neo-edge/#'")


def test_fails_when_an_imported_fleet_without_role_is_asked_to_allow_artifact_read():
    stack = cdk.Stack(cdk.App(), "S")
    fleet = EdgeFleet.from_thing_group_name(stack, "Fleet", "cameras")
    models = ModelArtifactBucket.from_bucket_name(stack, "Models", "models-bucket")
    with pytest.raises(ValueError) as exc:
        fleet.allow_artifact_read(models, "compiled/*")
    assert str(exc.value) == (
        "fleet cameras was imported without its token exchange role, so its devices cannot be "
        "allowed to read artifacts here; pass token_exchange_role to "
        "EdgeFleet.from_thing_group_name (e.g. iam.Role.from_role_name(...)), or grant that "
        "role read yourself")


def test_fails_when_bucket_name_is_not_an_s3_bucket_name():
    with pytest.raises(ValueError) as exc:
        ModelArtifactBucket.from_bucket_name(cdk.Stack(cdk.App(), "S"), "Models", "My Bucket")
    assert str(exc.value) == ("bucket_name must be 3 to 63 lowercase letters, digits, '.' or '-', "
                              "starting and ending with a letter or digit; got 'My Bucket'")


def test_fails_when_bucket_arn_is_an_object_arn():
    with pytest.raises(ValueError) as exc:
        ModelArtifactBucket.from_bucket_arn(cdk.Stack(cdk.App(), "S"), "Models",
                                            "arn:aws:s3:::models-bucket/compiled/*")
    assert str(exc.value) == ("bucket_arn must be an S3 bucket ARN like arn:aws:s3:::my-bucket; "
                              "got 'arn:aws:s3:::models-bucket/compiled/*'")


def test_fails_when_imported_component_name_is_invalid():
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent.from_component_version(cdk.Stack(cdk.App(), "S"), "C",
                                                      "com example", "1.0.0")
    assert str(exc.value) == ("component name must be 1 to 128 letters, digits, '-', '_' or '.'; "
                              "got 'com example'")


def test_fails_when_imported_component_version_is_a_range():
    with pytest.raises(ValueError) as exc:
        EdgeLambdaComponent.from_component_version(cdk.Stack(cdk.App(), "S"), "C",
                                                   "com.example.C", "^1.0.0")
    assert str(exc.value) == "component version must be a semantic version like 1.0.0; got '^1.0.0'"


def test_fails_when_deployment_id_has_spaces():
    with pytest.raises(ValueError) as exc:
        EdgeDeployment.from_deployment_id(cdk.Stack(cdk.App(), "S"), "D", "dep 1")
    assert str(exc.value) == ("deployment_id must be a Greengrass deployment id (1 to 128 letters, "
                              "digits, '-' or '_'); got 'dep 1'")


def test_fails_when_state_machine_arn_is_a_function_arn():
    arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:retrain"
    with pytest.raises(ValueError) as exc:
        RetrainPipeline.from_state_machine_arn(cdk.Stack(cdk.App(), "S"), "R", arn)
    assert str(exc.value) == (f"state_machine_arn must be a Step Functions state machine ARN "
                              f"(arn:aws:states:<region>:<account>:stateMachine:<name>); got {arn!r}")


def test_fails_when_compilation_output_has_no_uri(files):
    stack = cdk.Stack(cdk.App(), "S")
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(stack, "C", component_name="com.example.C",
                               models=[SimpleNamespace(target=TargetDevice.RASP4B)],
                               runtime_bundles=files.bundles)
    assert str(exc.value).startswith("models must be CompiledModel objects, compilation jobs (with "
                                     "compiled_model_uri and target) or artifact folder paths; got ")
