"""The custom-resource handler behind ArtifactSigningKey: the KMS key's public key, under moto.

The event shape is CloudFormation's custom resource request as the CDK Provider framework
passes it on (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/crpg-ref-requests.html).
"""

from __future__ import annotations

import base64
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from neo_edge_runtime.signature import PublicKey, parse_public_key

REGION = "us-east-1"


def context():
    return SimpleNamespace(function_name="signing_public_key", memory_limit_in_mb=256,
                           invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:k",
                           aws_request_id="req-1")


def event(request_type, key_id, physical_id=None):
    body = {"RequestType": request_type, "ServiceToken": "arn:aws:lambda:::function:provider",
            "ResponseURL": "https://example.invalid/", "StackId": "stack", "RequestId": "r-1",
            "LogicalResourceId": "PublicKey", "ResourceType": "Custom::NeoEdgeSigningPublicKey",
            "ResourceProperties": {"ServiceToken": "arn:aws:lambda:::function:provider",
                                   "KeyId": key_id}}
    if physical_id is not None:
        body["PhysicalResourceId"] = physical_id
    return body


@pytest.fixture
def handler(load_lambda, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "signing_public_key")
    with mock_aws():
        yield load_lambda("signing_public_key")


def test_create_returns_the_public_key_devices_take(handler):
    kms = boto3.client("kms", region_name=REGION)
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    result = handler.on_event(event("Create", key["Arn"]), context())
    der = kms.get_public_key(KeyId=key["KeyId"])["PublicKey"]
    assert result["PhysicalResourceId"] == key["Arn"]
    assert base64.b64decode(result["Data"]["PublicKey"]) == der
    assert parse_public_key(result["Data"]["PublicKey"]) == PublicKey(der)
    assert parse_public_key(result["Data"]["PublicKeyPem"]) == PublicKey(der)
    assert result["Data"]["Fingerprint"] == PublicKey(der).fingerprint


def test_delete_does_nothing(handler):
    assert handler.on_event(event("Delete", "k", physical_id="arn:k"), context()) == {
        "PhysicalResourceId": "arn:k"}


def test_fails_when_the_key_is_not_a_p256_signing_key(handler):
    kms = boto3.client("kms", region_name=REGION)
    key = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    with pytest.raises(ValueError, match=rf"^KMS key {key['Arn']} must be ECC_NIST_P256 for "
                                         r"SIGN_VERIFY \(devices verify ECDSA P-256 signatures\); "
                                         r"got KeySpec ECC_NIST_P384, KeyUsage SIGN_VERIFY$"):
        handler.on_event(event("Create", key["Arn"]), context())
