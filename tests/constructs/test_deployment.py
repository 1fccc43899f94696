"""EdgeDeployment: the whole component set of a fleet, rollout, abort, rollback, safety."""

from __future__ import annotations

import json
from types import SimpleNamespace

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match

from checks import synth_checked
from neo_edge.component import EdgeInferenceComponent
from neo_edge.deployment import (AbortFailureType, DeploymentComponent, EdgeDeployment,
                                 FailureHandling)
from neo_edge.fleet import EdgeFleet

from test_component import make_artifact, make_bundle


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    return SimpleNamespace(rasp4b=make_artifact(root / "rasp4b", "rasp4b"),
                           rasp4b_v2=make_artifact(root / "rasp4b-v2", "rasp4b", b"v2"),
                           bundles={"aarch64": make_bundle(root / "bundle")})


def build(files, model=None, stack_id="Deploy", **kwargs):
    app = cdk.App()
    stack = cdk.Stack(app, stack_id)
    fleet = EdgeFleet(stack, "Fleet", fleet_name="cameras")
    component = EdgeInferenceComponent(stack, "Classifier", component_name="com.example.Classifier",
                                       models=[model or files.rasp4b], runtime_bundles=files.bundles)
    deployment = EdgeDeployment(stack, "Deployment", fleet=fleet, components=[component], **kwargs)
    return app, stack, fleet, component, deployment


@pytest.fixture(scope="module")
def built(files):
    app, stack, fleet, component, deployment = build(files)
    deployment.add_component(DeploymentComponent.public(
        "aws.greengrass.LogManager", "2.3.7", merge={"logsUploaderConfiguration": {}}))
    template = synth_checked(app, stack)
    (res,) = template.find_resources("AWS::GreengrassV2::Deployment").values()
    return SimpleNamespace(template=template, deployment=deployment, component=component,
                           fleet=fleet, props=res["Properties"], resource=res, stack=stack)


def test_targets_the_fleet_thing_group(built):
    assert built.props["TargetArn"]["Fn::Join"][1][-1] == ":thinggroup/cameras"


def test_deploys_the_whole_component_set(built):
    assert built.props["Components"] == {
        "aws.greengrass.LogManager": {
            "ComponentVersion": "2.3.7",
            "ConfigurationUpdate": {"Merge": '{"logsUploaderConfiguration": {}}'}},
        "com.example.Classifier": {"ComponentVersion": built.component.component_version},
    }
    assert built.deployment.component_names == ["aws.greengrass.LogManager", "com.example.Classifier"]


def test_defaults_rollback_notify_exponential_abort(built):
    assert built.props["DeploymentPolicies"] == {
        "FailureHandlingPolicy": "ROLLBACK",
        "ComponentUpdatePolicy": {"Action": "NOTIFY_COMPONENTS", "TimeoutInSeconds": 60},
        "ConfigurationValidationPolicy": {"TimeoutInSeconds": 30}}
    assert built.props["IotJobConfiguration"] == {
        "JobExecutionsRolloutConfig": {
            "ExponentialRate": {"BaseRatePerMinute": 5, "IncrementFactor": 2,
                                "RateIncreaseCriteria": {"NumberOfSucceededThings": 5}},
            "MaximumPerMinute": 100},
        "AbortConfig": {"CriteriaList": [{"Action": "CANCEL", "FailureType": "ALL",
                                          "ThresholdPercentage": 10,
                                          "MinNumberOfExecutedThings": 5}]}}


def test_waits_for_component_version_and_fleet(built):
    depends = built.resource["DependsOn"]
    (component_id,) = built.template.find_resources("AWS::GreengrassV2::ComponentVersion")
    (group_id,) = built.template.find_resources("AWS::IoT::ThingGroup")
    assert component_id in depends and group_id in depends


def test_fleet_may_read_exactly_the_component_artifacts(built):
    built.template.has_resource_properties("AWS::IAM::Policy", {
        "Roles": [{"Ref": Match.string_like_regexp("FleetTokenExchangeRole")}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Action": "s3:GetObject",
            "Resource": [Match.any_value(), Match.any_value()]})])}})


def test_name_is_derived_from_content_and_stable(built, files):
    name = built.props["DeploymentName"]
    assert name.startswith("cameras-") and len(name) == len("cameras-") + 12
    _, _, _, _, again = build(files, stack_id="Again")
    again.add_component(DeploymentComponent.public(
        "aws.greengrass.LogManager", "2.3.7", merge={"logsUploaderConfiguration": {}}))
    assert again.deployment_name == name


def test_new_model_gives_a_new_deployment_name(built, files):
    _, _, _, _, changed = build(files, model=files.rasp4b_v2)
    changed.add_component(DeploymentComponent.public(
        "aws.greengrass.LogManager", "2.3.7", merge={"logsUploaderConfiguration": {}}))
    assert changed.deployment_name != built.deployment.deployment_name


def test_policy_change_gives_a_new_deployment_name(built, files):
    _, _, _, _, changed = build(files, failure_handling=FailureHandling.DO_NOTHING)
    changed.add_component(DeploymentComponent.public(
        "aws.greengrass.LogManager", "2.3.7", merge={"logsUploaderConfiguration": {}}))
    assert changed.deployment_name != built.deployment.deployment_name


def test_options(files):
    app, stack, _, component, deployment = build(
        files, nucleus_version="2.14.0",
        nucleus_configuration={"platformOverride": {"accelerator": "nvidia"}},
        abort_failure_type=AbortFailureType.FAILED, abort_threshold_percentage=25,
        rollout_base_rate_per_minute=2, rollout_maximum_per_minute=20,
        in_progress_timeout=cdk.Duration.hours(2))
    spec = stack.resolve(deployment.resource.components)
    assert spec["aws.greengrass.Nucleus"] == {
        "componentVersion": "2.14.0",
        "configurationUpdate": {"merge": '{"platformOverride": {"accelerator": "nvidia"}}'}}
    job = stack.resolve(deployment.resource.iot_job_configuration)
    assert job["abortConfig"]["criteriaList"][0]["failureType"] == "FAILED"
    assert job["abortConfig"]["criteriaList"][0]["thresholdPercentage"] == 25
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 120}


def test_run_with_limits(files):
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="f")
    deployment = EdgeDeployment(stack, "D", fleet=fleet, components=[DeploymentComponent.public(
        "com.example.X", "1.0.0", posix_user="ggc_user:ggc_group", memory=cdk.Size.mebibytes(64),
        cpus=0.5, reset=["/threadCount"])])
    spec = stack.resolve(deployment.resource.components)["com.example.X"]
    assert spec == {"componentVersion": "1.0.0",
                    "configurationUpdate": {"reset": ["/threadCount"]},
                    "runWith": {"posixUser": "ggc_user:ggc_group",
                                "systemResourceLimits": {"memory": 65536, "cpus": 0.5}}}


# ---------------------------------------------------------------------------------------
# Refusals


def test_fails_when_a_second_deployment_targets_the_fleet(files):
    app, stack, fleet, component, _ = build(files)
    with pytest.raises(ValueError) as exc:
        EdgeDeployment(stack, "Another", fleet=fleet, components=[DeploymentComponent.public(
            "aws.greengrass.Cli", "2.14.0")])
    assert str(exc.value) == (
        "fleet cameras already has a deployment (Deploy/Deployment): a Greengrass deployment "
        "replaces every component its fleet runs, so two would uninstall each other's components; "
        "give that deployment all of the fleet's components (components= or add_component)")


def test_fails_when_a_second_deployment_is_in_another_stack(files):
    app, _, fleet, _, _ = build(files)
    other = cdk.Stack(app, "Other")
    with pytest.raises(ValueError) as exc:
        EdgeDeployment(other, "D", fleet=fleet,
                       components=[DeploymentComponent.public("aws.greengrass.Cli", "2.14.0")])
    assert str(exc.value).startswith("fleet cameras already has a deployment (Deploy/Deployment)")


def test_fails_when_a_component_is_listed_twice(files):
    _, _, _, component, deployment = build(files)
    with pytest.raises(ValueError) as exc:
        deployment.add_component(component)
    assert str(exc.value) == (
        f"component com.example.Classifier is already in this deployment (version "
        f"{component.component_version}); a deployment runs one version of each component; "
        f"got it again with version {component.component_version}")


def test_fails_at_synth_when_no_components():
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="f")
    EdgeDeployment(stack, "D", fleet=fleet)
    with pytest.raises(RuntimeError) as exc:
        app.synth()
    assert ("deployment S/D has no components: deployed, it would uninstall every component from "
            "the fleet; add the components it should run") in str(exc.value)


def test_fails_when_failure_handling_is_unknown(files):
    with pytest.raises(ValueError) as exc:
        build(files, failure_handling="RETRY")
    assert str(exc.value) == "failure_handling must be one of ROLLBACK, DO_NOTHING; got 'RETRY'"


def test_fails_when_increment_factor_is_out_of_range(files):
    with pytest.raises(ValueError) as exc:
        build(files, rollout_increment_factor=10)
    assert str(exc.value) == "rollout_increment_factor must be from 1.1 to 5; got 10"


def test_fails_when_abort_threshold_is_over_100(files):
    with pytest.raises(ValueError) as exc:
        build(files, abort_threshold_percentage=150)
    assert str(exc.value) == "abort_threshold_percentage must be from 0 to 100; got 150"


def test_fails_when_maximum_rate_is_below_base_rate(files):
    with pytest.raises(ValueError) as exc:
        build(files, rollout_base_rate_per_minute=50, rollout_maximum_per_minute=10)
    assert str(exc.value) == ("rollout_maximum_per_minute must be at least "
                              "rollout_base_rate_per_minute (50); got 10")


def test_fails_when_nucleus_configuration_has_no_version(files):
    with pytest.raises(ValueError) as exc:
        build(files, nucleus_configuration={"platformOverride": {"accelerator": "nvidia"}})
    assert str(exc.value) == ("nucleus_configuration needs nucleus_version: the nucleus is "
                              "configured by deploying it; got a configuration without a version")


def test_fails_when_public_component_version_is_a_range():
    with pytest.raises(ValueError) as exc:
        DeploymentComponent.public("aws.greengrass.Cli", "^2.0.0")
    assert str(exc.value) == "component version must be a semantic version like 1.0.0; got '^2.0.0'"


def test_fails_when_reset_is_not_a_pointer():
    with pytest.raises(ValueError) as exc:
        DeploymentComponent.public("aws.greengrass.Cli", "2.0.0", reset=["threadCount"])
    assert str(exc.value) == "reset entries must be JSON pointers like '/threadCount'; got 'threadCount'"


def test_fails_when_fleet_is_not_a_fleet():
    with pytest.raises(ValueError) as exc:
        EdgeDeployment(cdk.Stack(cdk.App(), "S"), "D", fleet="cameras")
    assert str(exc.value) == "fleet must be an EdgeFleet (an object with thing_group_arn); got 'cameras'"


def test_merge_is_json(built):
    merge = built.props["Components"]["aws.greengrass.LogManager"]["ConfigurationUpdate"]["Merge"]
    assert json.loads(merge) == {"logsUploaderConfiguration": {}}


def test_edge_compilation_jobs_deploy_to_the_fleet(files):
    """EdgeCompilationJob outputs (deploy-time URIs) -> component -> deployment, nag-clean."""
    from neo_edge import EdgeCompilationJob, Framework, ModelArtifactBucket
    app = cdk.App()
    stack = cdk.Stack(app, "Neo")
    models = ModelArtifactBucket(stack, "Models")
    jobs = EdgeCompilationJob.for_targets(stack, "Xgb", bucket=models, model="models/model.tar.gz",
                                          framework=Framework.XGBOOST,
                                          targets=["rasp4b", "ml_c5", "ml_g4dn"])
    fleet = EdgeFleet(stack, "Fleet", fleet_name="neo-fleet")
    component = EdgeInferenceComponent(stack, "Classifier", component_name="com.example.Xgb",
                                       models=list(jobs.values()),
                                       runtime_bundles={"aarch64": files.bundles["aarch64"],
                                                        "x86_64": files.bundles["aarch64"],
                                                        "x86_64-cuda": files.bundles["aarch64"]})
    EdgeDeployment(stack, "Deployment", fleet=fleet, components=[component])
    template = synth_checked(app, stack)
    recipe = json.loads("".join(p if isinstance(p, str) else "X" for p in next(iter(
        template.find_resources("AWS::GreengrassV2::ComponentVersion").values()
    ))["Properties"]["InlineRecipe"]["Fn::Join"][1]))
    assert [m["Name"] for m in recipe["Manifests"]] == ["ml_g4dn", "rasp4b", "ml_c5"]
    assert all(m["Artifacts"][1] == {"Uri": "X", "Unarchive": "NONE",
                                     "Permission": {"Read": "OWNER", "Execute": "NONE"}}
               for m in recipe["Manifests"])
    template.has_resource_properties("AWS::IAM::Policy", {
        "Roles": [{"Ref": Match.string_like_regexp("FleetTokenExchangeRole")}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Action": "s3:GetObject"})])}})
