"""EdgeFleet: thing group, scoped device policy, token exchange role and alias, provisioning."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template

from checks import synth_checked
from neo_edge.fleet import THING, EdgeFleet


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Fleet")
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    bucket = s3.Bucket.from_bucket_attributes(stack, "Artifacts", bucket_name="artifacts",
                                              encryption_key=key)
    fleet = EdgeFleet(stack, "Fleet", fleet_name="cameras", thing_names=["cam-1", "cam-2"],
                      artifact_bucket=bucket, artifact_prefix="models/",
                      fleet_provisioning=True)
    deployer = iam.Role(stack, "Deployer", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    fleet.grant_deploy(deployer)
    fleet.grant_publish_to_devices(deployer)
    cdk.Validations.of(deployer).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-IAM5", reason="test role"))
    for finding in ("thing/*", "job/*"):
        cdk.Validations.of(deployer).acknowledge(cdk.Acknowledgment(
            id=f"AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:"
               f"<AWS::AccountId>:{finding}]", reason="test role"))
    cdk.Validations.of(deployer).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:greengrass:"
           "<AWS::Region>:<AWS::AccountId>:deployments:*]", reason="test role"))
    cdk.Validations.of(deployer).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:"
           "<AWS::AccountId>:topic/neo-edge/*]", reason="test role"))
    dynamic_stack = cdk.Stack(app, "Dynamic")
    EdgeFleet(dynamic_stack, "Fleet", dynamic_query="attributes.kind:camera")
    template, dynamic = synth_checked(app, stack, dynamic_stack)
    return fleet, template, dynamic


def device_policy(template: Template) -> dict:
    policies = template.find_resources("AWS::IoT::Policy",
                                       {"Properties": {"PolicyName": "cameras-DevicePolicy"}})
    (policy,) = policies.values()
    return policy["Properties"]["PolicyDocument"]


def arn_tail(resource) -> str:
    """The literal end of an ARN that CDK rendered as Fn::Join."""
    return resource["Fn::Join"][1][-1] if isinstance(resource, dict) else resource


def test_static_thing_group(built):
    _, template, _ = built
    template.has_resource_properties("AWS::IoT::ThingGroup", {
        "ThingGroupName": "cameras", "QueryString": Match.absent()})


def test_dynamic_thing_group(built):
    _, _, dynamic = built
    dynamic.has_resource_properties("AWS::IoT::ThingGroup", {
        "QueryString": "attributes.kind:camera"})
    dynamic.resource_count_is("AWS::IoT::Thing", 0)


def test_default_name_is_unique_and_valid(built):
    _, _, dynamic = built
    (group,) = dynamic.find_resources("AWS::IoT::ThingGroup").values()
    assert group["Properties"]["ThingGroupName"].startswith("Dynamic-Fleet")


def test_device_connects_only_as_its_own_thing(built):
    _, template, _ = built
    connect = device_policy(template)["Statement"][0]
    assert connect["Action"] == "iot:Connect"
    assert [arn_tail(r) for r in connect["Resource"]] == [
        f":client/{THING}", f":client/{THING}#*"]
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}


def test_device_topics_are_its_own(built):
    _, template, _ = built
    statements = {s["Sid"]: s for s in device_policy(template)["Statement"]}
    topics = [arn_tail(r) for r in statements["OwnTopics"]["Resource"]]
    filters = [arn_tail(r) for r in statements["OwnTopicFilters"]["Resource"]]
    assert topics == [f":topic/$aws/things/{THING}/greengrass/*",
                      f":topic/$aws/things/{THING}/greengrassv2/*",
                      f":topic/$aws/things/{THING}/jobs/*",
                      f":topic/$aws/things/{THING}/shadow/*",
                      f":topic/neo-edge/{THING}/*"]
    assert filters == [t.replace(":topic/", ":topicfilter/") for t in topics]
    assert all(THING in t for t in topics)


def test_device_may_assume_only_the_fleet_role_alias(built):
    _, template, _ = built
    statements = {s["Sid"]: s for s in device_policy(template)["Statement"]}
    (alias_id,) = template.find_resources("AWS::IoT::RoleAlias")
    assert statements["TokenExchange"] == {
        "Sid": "TokenExchange", "Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
        "Resource": {"Fn::GetAtt": [alias_id, "RoleAliasArn"]}}


def test_token_exchange_role_trusts_iot_credentials_provider(built):
    _, template, _ = built
    template.has_resource_properties("AWS::IAM::Role", {
        "AssumeRolePolicyDocument": {"Statement": [{
            "Action": "sts:AssumeRole", "Effect": "Allow",
            "Principal": {"Service": "credentials.iot.amazonaws.com"}}]}})


def test_token_exchange_role_reads_the_artifact_prefix_only(built):
    fleet, template, _ = built
    policy = template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [
        {"Ref": Match.string_like_regexp("FleetTokenExchangeRole")}]}})
    (doc,) = [p["Properties"]["PolicyDocument"] for p in policy.values()]
    s3_statements = [s for s in doc["Statement"] if "s3:GetObject" in json.dumps(s["Action"])]
    assert len(s3_statements) == 1
    assert s3_statements[0]["Action"] == "s3:GetObject"
    assert arn_tail(s3_statements[0]["Resource"]) == ":s3:::artifacts/models/*"
    kms_actions = [s["Action"] for s in doc["Statement"] if "kms" in json.dumps(s["Action"])]
    assert kms_actions == ["kms:Decrypt"]
    assert fleet.artifact_key_pattern == "models/*"


def test_role_alias(built):
    _, template, _ = built
    template.has_resource_properties("AWS::IoT::RoleAlias", {
        "RoleAlias": "cameras-TokenExchangeRoleAlias", "CredentialDurationSeconds": 3600,
        "RoleArn": {"Fn::GetAtt": [Match.string_like_regexp("FleetTokenExchangeRole"), "Arn"]}})


def test_things_are_created_and_added_to_the_group(built):
    _, template, _ = built
    template.resource_count_is("AWS::IoT::Thing", 2)
    template.has_resource_properties("AWS::IoT::Thing", {"ThingName": "cam-1"})
    members = template.find_resources("Custom::AWS")
    assert len(members) == 2
    create = json.dumps(next(iter(members.values()))["Properties"]["Create"])
    assert "addThingToThingGroup" in create and "cameras" in create


def test_fleet_provisioning_template(built):
    _, template, _ = built
    (tpl,) = template.find_resources("AWS::IoT::ProvisioningTemplate").values()
    props = tpl["Properties"]
    assert props["TemplateName"] == "cameras-FleetProvisioning"
    assert props["Enabled"] is True
    body = json.loads(props["TemplateBody"])
    assert body["Resources"]["thing"]["Properties"]["ThingGroups"] == ["cameras"]
    assert body["Resources"]["policy"]["Properties"]["PolicyName"] == "cameras-DevicePolicy"
    template.has_resource_properties("AWS::IAM::Role", {
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Principal": {"Service": "iot.amazonaws.com"}})]}})


def test_provisioning_asks_the_hook_which_devices_may_register(built):
    fleet, template, _ = built
    hook_id = cdk.Stack.of(fleet).get_logical_id(fleet.provisioning_hook.node.default_child)
    template.has_resource_properties("AWS::IoT::ProvisioningTemplate", {
        "PreProvisioningHook": {"TargetArn": {"Fn::GetAtt": [hook_id, "Arn"]},
                                "PayloadVersion": "2020-04-01"}})
    template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "provisioning_hook.handler",
        "Environment": {"Variables": Match.object_like({
            "TEMPLATE_NAME": "cameras-FleetProvisioning", "THING_NAME_PREFIX": ""})}})
    # Only AWS IoT, for this account's template, may invoke it.
    (permission,) = [p["Properties"] for p in template.find_resources("AWS::Lambda::Permission").values()
                     if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [hook_id, "Arn"]}]
    assert permission["Principal"] == "iot.amazonaws.com"
    assert arn_tail(permission["SourceArn"]) == ":provisioningtemplate/cameras-FleetProvisioning"
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_provisioned_thing_names_may_carry_a_prefix():
    stack = new_stack()
    fleet = EdgeFleet(stack, "F", fleet_name="gateways", fleet_provisioning=True,
                      provisioning_thing_name_prefix="gw-")
    Template.from_stack(stack).has_resource_properties("AWS::Lambda::Function", {
        "Environment": {"Variables": Match.object_like({"THING_NAME_PREFIX": "gw-"})}})
    assert fleet.provisioning_hook is not None


def test_fails_when_a_thing_name_prefix_comes_without_provisioning():
    with pytest.raises(ValueError, match=r"^provisioning_thing_name_prefix applies to "
                                         r"fleet_provisioning; got 'gw-' without it$"):
        EdgeFleet(new_stack(), "F", provisioning_thing_name_prefix="gw-")


def test_claim_policy_allows_only_provisioning_topics(built):
    _, template, _ = built
    (claim,) = template.find_resources("AWS::IoT::Policy", {
        "Properties": {"PolicyName": "cameras-ClaimPolicy"}}).values()
    topics = [arn_tail(r) for r in claim["Properties"]["PolicyDocument"]["Statement"][1]["Resource"]]
    assert topics == [":topic/$aws/certificates/create/*",
                      ":topic/$aws/provisioning-templates/cameras-FleetProvisioning/provision/*"]


def test_claim_connections_use_client_ids_no_device_may_have(built):
    fleet, template, _ = built
    (claim,) = template.find_resources("AWS::IoT::Policy", {
        "Properties": {"PolicyName": "cameras-ClaimPolicy"}}).values()
    connect = claim["Properties"]["PolicyDocument"]["Statement"][0]
    assert connect["Action"] == "iot:Connect" and arn_tail(connect["Resource"]) == ":client/claim-*"
    hook_id = cdk.Stack.of(fleet).get_logical_id(fleet.provisioning_hook.node.default_child)
    (hook,) = [r for k, r in template.find_resources("AWS::Lambda::Function").items() if k == hook_id]
    assert hook["Properties"]["Environment"]["Variables"]["RESERVED_PREFIX"] == "claim-"


def test_fails_when_the_thing_name_prefix_is_a_claim_client_id():
    with pytest.raises(ValueError, match=r"not starting with 'claim-'"):
        EdgeFleet(new_stack(), "F", fleet_provisioning=True, provisioning_thing_name_prefix="claim-x")


def test_grant_deploy(built):
    _, template, _ = built
    template.has_resource_properties("AWS::IAM::Policy", {
        "Roles": [{"Ref": Match.string_like_regexp("Deployer")}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Action": Match.array_with(["greengrass:CreateDeployment", "iot:CreateJob"])})])}})


def test_outputs_name_what_the_installer_needs(built):
    _, template, _ = built
    outputs = template.to_json()["Outputs"]
    values = {o["Value"] for o in outputs.values()}
    assert {"cameras", "cameras-DevicePolicy", "cameras-TokenExchangeRoleAlias"} <= values


# ---------------------------------------------------------------------------------------
# Refusals


def new_stack():
    return cdk.Stack(cdk.App(), "S")


def test_fails_when_fleet_name_has_spaces():
    with pytest.raises(ValueError) as exc:
        EdgeFleet(new_stack(), "F", fleet_name="my fleet")
    assert str(exc.value) == "fleet_name must be 1 to 105 letters, digits, '-' or '_'; got 'my fleet'"


def test_fails_when_things_go_to_a_dynamic_group():
    with pytest.raises(ValueError) as exc:
        EdgeFleet(new_stack(), "F", dynamic_query="attributes.a:b", thing_names=["t1"])
    assert str(exc.value) == ("thing_names cannot be added to a dynamic thing group (its members "
                              "are the things matching 'attributes.a:b'); got t1")


def test_fails_when_provisioning_a_dynamic_group():
    with pytest.raises(ValueError) as exc:
        EdgeFleet(new_stack(), "F", dynamic_query="attributes.a:b", fleet_provisioning=True)
    assert str(exc.value) == ("fleet_provisioning needs a static thing group to add devices to; "
                              "got dynamic_query 'attributes.a:b'")


def test_fails_when_thing_name_is_invalid():
    with pytest.raises(ValueError) as exc:
        EdgeFleet(new_stack(), "F", thing_names=["cam/1"])
    assert str(exc.value) == ("thing names must be 1 to 128 letters, digits, ':', '-' or '_'; "
                              "got 'cam/1'")


def test_fails_when_thing_names_repeat():
    with pytest.raises(ValueError) as exc:
        EdgeFleet(new_stack(), "F", thing_names=["a", "a"])
    assert str(exc.value) == "thing_names must not repeat; got a, a"


def test_fails_when_topic_prefix_has_a_wildcard():
    with pytest.raises(ValueError) as exc:
        EdgeFleet(new_stack(), "F", topic_prefix="fleet/#")
    assert str(exc.value) == ("topic_prefix must be topic levels of letters, digits, '-' and '_' "
                              "without wildcards or a leading '$'; got 'fleet/#'")


def test_fails_when_credential_duration_is_too_long():
    with pytest.raises(ValueError) as exc:
        EdgeFleet(new_stack(), "F", credential_duration=cdk.Duration.hours(13))
    assert str(exc.value) == "credential_duration must be from 15 minutes to 12 hours; got 46800 seconds"


def test_fails_when_artifact_prefix_has_a_wildcard():
    stack = new_stack()
    bucket = s3.Bucket.from_bucket_name(stack, "B", "bkt")
    with pytest.raises(ValueError) as exc:
        EdgeFleet(stack, "F", artifact_bucket=bucket, artifact_prefix="models/*")
    assert str(exc.value) == ("artifact_prefix must be a key prefix without a leading '/' or '*'; "
                              "got 'models/*'")


def test_provisioning_template_name_fits_iot_limit_for_long_fleet_names():
    from neo_edge.fleet import provisioning_template_name

    assert provisioning_template_name("cameras") == "cameras-FleetProvisioning"
    long_name = "warehouse-cameras-building-7"
    name = provisioning_template_name(long_name)
    assert len(name) <= 36 and name.startswith("warehouse-cameras") and name.endswith("-FP")
    assert name == provisioning_template_name(long_name)
    assert name != provisioning_template_name(long_name + "b")
