"""The public key of an artifact signing key: the custom-resource handler behind
``ArtifactSigningKey`` (CDK Provider framework, ``on_event`` only).

A KMS key's public key exists only once the key does, so it cannot be written into a
template at synth; this handler reads it at deploy time (KMS ``GetPublicKey``) so that
the inference component's configuration can carry it.

Resource properties::

    KeyId: the key's id or ARN

Create/Update return ``Data``:

- ``PublicKey``: the base64 of the DER SubjectPublicKeyInfo (what ``aws kms get-public-key
  --query PublicKey --output text`` prints), one line of ``[A-Za-z0-9+/=]``: safe inside the
  JSON recipe CloudFormation assembles (a PEM's line breaks would not be, and CloudFormation
  cannot escape them);
- ``PublicKeyPem``: the same key as PEM text, for people and ``openssl``;
- ``Fingerprint``: sha256 of the DER, hex (what device logs print).

The key must be ``ECC_NIST_P256`` for ``SIGN_VERIFY`` (what devices verify); any other is a
failed deployment naming what it is. The physical id is the ``KeyId`` given (the key
ARN); Delete does nothing (the key is the ``AWS::KMS::Key`` resource's to delete).

The AWS CDK's ``AwsCustomResource`` cannot do this: with the JavaScript SDK v3 it decodes
blob fields such as ``PublicKey`` as UTF-8 text, which mangles the DER bytes.
"""

from __future__ import annotations

import base64
import hashlib

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import CloudFormationCustomResourceEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
kms = boto3.client("kms")

KEY_SPEC = "ECC_NIST_P256"
KEY_USAGE = "SIGN_VERIFY"


def pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"


@logger.inject_lambda_context(log_event=False)
def on_event(event: dict, context: LambdaContext) -> dict:
    """Create/Update: read the key's public key; Delete: nothing."""
    cfn = CloudFormationCustomResourceEvent(event)
    if cfn.request_type == "Delete":
        return {"PhysicalResourceId": cfn.physical_resource_id}
    if cfn.request_type not in ("Create", "Update"):
        raise ValueError(f"RequestType must be Create, Update or Delete; got {cfn.request_type!r}")
    key_id = (cfn.resource_properties or {}).get("KeyId")
    if not isinstance(key_id, str) or not key_id:
        raise ValueError(f"resource property KeyId must be a KMS key id or ARN; got {key_id!r}")
    response = kms.get_public_key(KeyId=key_id)
    # KMS returns KeySpec and its deprecated twin CustomerMasterKeySpec (moto only the latter).
    spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
    usage = response.get("KeyUsage")
    if spec != KEY_SPEC or usage != KEY_USAGE:
        raise ValueError(f"KMS key {key_id} must be {KEY_SPEC} for {KEY_USAGE} (devices verify "
                         f"ECDSA P-256 signatures); got KeySpec {spec}, KeyUsage {usage}")
    der = bytes(response["PublicKey"])
    fingerprint = hashlib.sha256(der).hexdigest()
    logger.info("public key read", extra={"key": response["KeyId"], "fingerprint": fingerprint})
    return {"PhysicalResourceId": key_id,
            "Data": {"PublicKey": base64.b64encode(der).decode(), "PublicKeyPem": pem(der),
                     "Fingerprint": fingerprint}}
