"""ArtifactSigningKey: a KMS ECC_NIST_P256 signing key, kms:Sign grants, its public key for
devices through the inference component's configuration."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam

from checks import synth_checked
from neo_edge import ArtifactSigningKey, EdgeInferenceComponent


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Signing")
    key = ArtifactSigningKey(stack, "Signing", alias="neo-edge-signing")
    builder = iam.Role(stack, "Builder", assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"))
    grant = key.grant_sign(builder)
    return synth_checked(app, stack), stack, key, grant


def test_the_key_is_an_ecc_p256_signing_key(built):
    template, *_ = built
    template.resource_count_is("AWS::KMS::Key", 1)
    template.has_resource_properties("AWS::KMS::Key", {
        "KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"})
    template.has_resource("AWS::KMS::Key", {"DeletionPolicy": "Retain"})
    template.has_resource_properties("AWS::KMS::Alias", {"AliasName": "alias/neo-edge-signing"})


def test_grant_sign_grants_kms_sign_only(built):
    template, stack, key, grant = built
    policies = template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [
        {"Ref": stack.get_logical_id(stack.node.find_child("Builder").node.default_child)}]}})
    (policy,) = policies.values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statements == [{"Action": "kms:Sign", "Effect": "Allow", "Resource": {
        "Fn::GetAtt": [stack.get_logical_id(key.key.node.default_child), "Arn"]}}]
    assert grant.success


def test_the_public_key_is_read_at_deploy_time_with_get_public_key_only(built):
    template, stack, key, _ = built
    template.has_resource_properties("Custom::NeoEdgeSigningPublicKey", {
        "KeyId": {"Fn::GetAtt": [stack.get_logical_id(key.key.node.default_child), "Arn"]}})
    handler_policy = stack.node.find_child("Signing").node.find_child("PublicKeyHandlerRole") \
        .node.find_child("DefaultPolicy")
    body = template.to_json()["Resources"][stack.get_logical_id(handler_policy.node.default_child)]
    actions = [s["Action"] for s in body["Properties"]["PolicyDocument"]["Statement"]]
    assert actions == ["kms:GetPublicKey"]
    assert stack.resolve(key.public_key) == {
        "Fn::GetAtt": [stack.get_logical_id(key.public_key_resource.node.default_child),
                       "PublicKey"]}


def test_the_component_gives_devices_the_public_key(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "neo_edge_runtime").mkdir(parents=True)
    (bundle / "edge_inference.py").write_text("")
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"target": {"name": "rasp4b"}, "files": {}}))
    app = cdk.App()
    stack = cdk.Stack(app, "Component")
    key = ArtifactSigningKey(stack, "Signing")
    component = EdgeInferenceComponent(stack, "Classifier", component_name="com.example.C",
                                       models=[model], runtime_bundles={"aarch64": bundle},
                                       signing_key=key)
    config = component.recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert config["signingPublicKey"] == key.public_key
    assert config["allowUnsigned"] is False
    inline = json.dumps(stack.resolve(component.resource.inline_recipe))
    attribute = [stack.get_logical_id(key.public_key_resource.node.default_child), "PublicKey"]
    assert json.dumps({"Fn::GetAtt": attribute}) in inline
    env = component.recipe["Manifests"][0]["Lifecycle"]["Setenv"]
    assert env["NEO_EDGE_SIGNING_PUBLIC_KEY"] == "{configuration:/signingPublicKey}"
    assert env["NEO_EDGE_ALLOW_UNSIGNED"] == "{configuration:/allowUnsigned}"


def test_fails_when_the_key_is_given_twice(tmp_path):
    app = cdk.App()
    stack = cdk.Stack(app, "Twice")
    key = ArtifactSigningKey(stack, "Signing")
    with pytest.raises(ValueError, match="^give the signing key as signing_key or as "
                                         "configuration signingPublicKey, not both$"):
        EdgeInferenceComponent(stack, "C", component_name="com.example.C", models=["x"],
                               runtime_bundles={}, signing_key=key,
                               configuration={"signingPublicKey": "x"})


def test_fails_when_the_alias_is_reserved():
    stack = cdk.Stack(cdk.App(), "Alias")
    with pytest.raises(ValueError, match=r"^alias must be letters, digits, '/', '_' and '-', "
                                         r"not under alias/aws/; got 'aws/mine'$"):
        ArtifactSigningKey(stack, "Signing", alias="aws/mine")


def test_unsigned_models_may_still_be_allowed_with_a_key(tmp_path):
    from neo_edge_runtime.compile import recipe as r

    platforms = [r.PlatformArtifacts(platform={"os": "linux", "architecture": "aarch64"},
                                     model=r.Artifact("s3://b/m.zip", unarchive="ZIP"),
                                     runtime=r.Artifact("s3://b/r.zip", unarchive="ZIP"))]
    token = cdk.Token.as_string(cdk.Fn.get_att("Key", "PublicKey"))
    config = r.inference_recipe(component_name="c", platforms=platforms, configuration={
        "signingPublicKey": token, "allowUnsigned": True})["ComponentConfiguration"][
        "DefaultConfiguration"]
    assert (config["signingPublicKey"], config["allowUnsigned"]) == (token, True)
