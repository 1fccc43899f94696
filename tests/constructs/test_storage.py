"""ModelArtifactBucket: a private, encrypted, versioned, logged bucket; or a wrapped one."""

from __future__ import annotations

import re

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match

from checks import synth_checked
from neo_edge import ModelArtifactBucket
from neo_edge._sagemaker_job import nag_flatten


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Storage")
    models = ModelArtifactBucket(stack, "Models")
    reader = iam.Role(stack, "Reader", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    writer = iam.Role(stack, "Writer", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    models.grant_read_models(reader, "compiled/")
    models.grant_write_models(writer, "training/")
    _ack_grant_wildcards(stack, reader, writer)
    return synth_checked(app, stack), models


def _ack_grant_wildcards(stack, *roles):
    # CDK's grants use action wildcards (s3:GetObject*, kms:GenerateDataKey*, ...) and
    # prefix wildcards: acknowledged here, for the test roles only.
    models = stack.node.find_child("Models")
    findings = ["Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*",
                "Action::s3:Abort*", "Action::kms:ReEncrypt*", "Action::kms:GenerateDataKey*"]
    findings += [f"Resource::{nag_flatten(stack, models.bucket.arn_for_objects(p))}"
                 for p in ("compiled/*", "training/*")]
    for role in roles:
        policy = role.node.find_child("DefaultPolicy")
        for finding in findings:
            cdk.Validations.of(policy).acknowledge(cdk.Acknowledgment(
                id=f"AwsSolutions::AwsSolutions-IAM5[{finding}]", reason="test role"))


def test_bucket_is_kms_encrypted_versioned_and_private(built):
    template, _ = built
    template.has_resource_properties("AWS::S3::Bucket", {
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
            "BucketKeyEnabled": True,
            "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                              "KMSMasterKeyID": Match.any_value()}}]},
        "VersioningConfiguration": {"Status": "Enabled"},
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True,
                                           "RestrictPublicBuckets": True},
        "LoggingConfiguration": {"DestinationBucketName": Match.any_value(),
                                 "LogFilePrefix": "model-artifacts/"},
    })


def test_old_versions_expire(built):
    template, _ = built
    template.has_resource_properties("AWS::S3::Bucket", {
        "LifecycleConfiguration": {"Rules": Match.array_with([Match.object_like({
            "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
            "Status": "Enabled"})])}})


def test_key_rotates(built):
    template, _ = built
    template.resource_count_is("AWS::KMS::Key", 1)
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_two_buckets_data_and_access_logs(built):
    template, _ = built
    template.resource_count_is("AWS::S3::Bucket", 2)


def test_tls_only_policy(built):
    template, _ = built
    template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {
        "Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Action": "s3:*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})


def test_access_logs_delivered_by_bucket_policy_not_acls(built):
    template, _ = built
    template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {
        "Statement": Match.array_with([Match.object_like({
            "Sid": "S3ServerAccessLogsFromModelArtifacts",
            "Principal": {"Service": "logging.s3.amazonaws.com"},
            "Action": "s3:PutObject"})])}})


def test_grant_read_models_is_scoped_to_the_prefix(built):
    template, _ = built
    policies = template.find_resources("AWS::IAM::Policy")
    reader = next(p for k, p in policies.items() if k.startswith("ReaderDefaultPolicy"))
    resources = [r for s in reader["Properties"]["PolicyDocument"]["Statement"]
                 for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    assert any("/compiled/*" in str(r) for r in resources)
    assert not any("/training/*" in str(r) for r in resources)


def test_grant_write_models_is_scoped_to_the_prefix(built):
    template, _ = built
    policies = template.find_resources("AWS::IAM::Policy")
    writer = next(p for k, p in policies.items() if k.startswith("WriterDefaultPolicy"))
    statements = writer["Properties"]["PolicyDocument"]["Statement"]
    s3_put = next(s for s in statements if "s3:PutObject" in s["Action"])
    assert "/training/*" in str(s3_put["Resource"])


def test_wraps_an_existing_bucket():
    stack = cdk.Stack(cdk.App(), "Wrap")
    existing = s3.Bucket.from_bucket_name(stack, "Existing", "my-models")
    models = ModelArtifactBucket(stack, "Models", bucket=existing)
    assert models.bucket is existing
    assert models.s3_uri("a/b.tar.gz") == "s3://my-models/a/b.tar.gz"
    assert not [c for c in models.node.children]


@pytest.mark.parametrize("prefix", ["/models/", "models/*"])
def test_fails_when_prefix_is_not_a_key_prefix(prefix):
    stack = cdk.Stack(cdk.App(), "Bad")
    models = ModelArtifactBucket(stack, "Models")
    role = iam.Role(stack, "R", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    message = (f"prefix must be an S3 key prefix without a leading '/' or '*' "
               f"(e.g. 'models/'); got '{prefix}'")
    with pytest.raises(ValueError, match=re.escape(message)):
        models.grant_read_models(role, prefix)
