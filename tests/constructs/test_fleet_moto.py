"""EdgeFleet deployed into moto: the IoT parts moto's CloudFormation implements.

moto creates things, IoT policies, role aliases and IAM roles from a template; it
silently skips thing groups and provisioning templates, and cannot run the Lambda
function behind CDK's AwsCustomResource (its code is an asset that is never uploaded
here), so those are left out of the template sent and checked by assertions in
test_fleet.py instead.
"""

from __future__ import annotations

import json

import aws_cdk as cdk
import boto3
import pytest
from moto import mock_aws

from neo_edge.fleet import THING, EdgeFleet

SKIPPED_BY_MOTO = ("Custom::AWS", "AWS::Lambda::Function")

# moto warns about each resource type it skips (the thing group).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:moto.cloudformation.parsing")


@pytest.fixture(scope="module")
def template() -> dict:
    app = cdk.App()
    stack = cdk.Stack(app, "FleetMoto", synthesizer=cdk.DefaultStackSynthesizer(
        generate_bootstrap_version_rule=False))
    EdgeFleet(stack, "Fleet", fleet_name="moto-fleet", thing_names=["dev-1", "dev-2"])
    body = app.synth().get_stack_by_name("FleetMoto").template
    body["Resources"] = {k: v for k, v in body["Resources"].items()
                         if v["Type"] not in SKIPPED_BY_MOTO}
    return body


@pytest.fixture
def deployed(template):
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        cfn.create_stack(StackName="fleet", TemplateBody=json.dumps(template),
                         Capabilities=["CAPABILITY_IAM"])
        status = cfn.describe_stacks(StackName="fleet")["Stacks"][0]["StackStatus"]
        assert status == "CREATE_COMPLETE"
        yield boto3.client("iot", region_name="us-east-1"), boto3.client("iam")


def test_things_exist(deployed):
    iot, _ = deployed
    names = sorted(t["thingName"] for t in iot.list_things()["things"])
    assert names == ["dev-1", "dev-2"]


def test_device_policy_exists_with_policy_variables(deployed):
    iot, _ = deployed
    policy = iot.get_policy(policyName="moto-fleet-DevicePolicy")
    document = policy["policyDocument"]
    text = document if isinstance(document, str) else json.dumps(document)
    assert f"client/{THING}" in text
    assert "iot:AssumeRoleWithCertificate" in text


def test_role_alias_points_at_the_token_exchange_role(deployed):
    iot, iam = deployed
    alias = iot.describe_role_alias(roleAlias="moto-fleet-TokenExchangeRoleAlias")["roleAliasDescription"]
    assert alias["credentialDurationSeconds"] == 3600
    role_name = alias["roleArn"].rsplit("/", 1)[-1]
    trust = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "credentials.iot.amazonaws.com"}


def test_policy_is_refused_for_an_unknown_name(deployed):
    iot, _ = deployed
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as exc:
        iot.get_policy(policyName="moto-fleet-ClaimPolicy")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
