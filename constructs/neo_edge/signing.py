"""Artifact signing: the KMS key compiled models are signed with, and its public key for devices.

A compiled artifact's ``manifest.json`` lists every file's sha256; its signature,
``manifest.json.sig`` (ECDSA P-256 / SHA-256, DER), makes those hashes mean "built by us"
and not only "whole". :class:`ArtifactSigningKey` is an AWS KMS asymmetric key
(``ECC_NIST_P256``, ``SIGN_VERIFY``) that the build signs with (the private key never leaves
KMS) and whose public key the inference component gives its devices::

    signing = ArtifactSigningKey(stack, "Signing")
    signing.grant_sign(compile_project)              # kms:Sign, nothing else
    EdgeInferenceComponent(stack, "Classifier", ..., signing_key=signing)

and in the build (``neo_edge_runtime.compile.signing``)::

    neo-edge compile model.onnx -t rasp4b -o out --signing-kms-key $KEY_ARN \\
        --signing-public-key $PUBLIC_KEY     # signing.key_arn, signing.public_key

The public key exists only once the key does, so it is read at deploy time (KMS
``GetPublicKey``) by a custom resource of this construct: :attr:`public_key` is a token,
the base64 of the DER SubjectPublicKeyInfo (one line: it can sit in the JSON recipe
CloudFormation assembles, where a PEM's line breaks could not). Devices accept it as it is,
as they accept PEM.
"""

from __future__ import annotations

from typing import Optional

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from . import _checkov
from ._lambda import allow_redundant_depends_on, bundled_function

__all__ = ["ArtifactSigningKey"]


def _logical_id(construct: Construct) -> str:
    child = construct.node.default_child or construct
    return cdk.Stack.of(construct).get_logical_id(child)


class ArtifactSigningKey(Construct):
    """An AWS KMS key that signs compiled model artifacts, and its public key for devices.

    Parameters
    ----------
    alias:
        A KMS alias for the key (``alias/`` is added if missing), for the build to name
        it by. Default: none (refer to it by :attr:`key_arn`).
    description:
        Default: a description naming the use.
    removal_policy:
        What happens to the key when it leaves the stack. Default: retained (a key
        scheduled for deletion can sign nothing more; devices keep its public key).

    Attributes
    ----------
    key:
        The ``kms.Key`` (``ECC_NIST_P256``, ``SIGN_VERIFY``; no rotation: KMS does not
        rotate asymmetric keys).
    key_arn, key_id:
        What the build's ``--signing-kms-key`` takes.
    public_key:
        The public key, base64 of the DER SubjectPublicKeyInfo (a token resolved at
        deploy time): what ``EdgeInferenceComponent(signing_key=...)`` puts in the
        component configuration (``signingPublicKey``) and what the build's
        ``--signing-public-key`` takes.
    public_key_pem:
        The same key as PEM text (a token), for outputs and ``openssl``.
    fingerprint:
        sha256 of the DER public key, hex (a token), as device logs print it.
    """

    def __init__(self, scope: Construct, id: str, *, alias: Optional[str] = None,
                 description: Optional[str] = None,
                 removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN) -> None:
        super().__init__(scope, id)
        if alias is not None and not cdk.Token.is_unresolved(alias):
            name = alias if alias.startswith("alias/") else f"alias/{alias}"
            if name.startswith("alias/aws/") or not all(
                    c.isalnum() or c in "/_-" for c in name) or len(name) > 256:
                raise ValueError(f"alias must be letters, digits, '/', '_' and '-', not under "
                                 f"alias/aws/; got {alias!r}")
            alias = name
        self.key = kms.Key(
            self, "Resource",
            key_spec=kms.KeySpec.ECC_NIST_P256, key_usage=kms.KeyUsage.SIGN_VERIFY,
            alias=alias, removal_policy=removal_policy,
            description=description or "neo-edge: signs compiled model artifacts "
                                       "(manifest.json.sig, ECDSA P-256 / SHA-256)")
        self.key_arn = self.key.key_arn
        self.key_id = self.key.key_id

        handler = bundled_function(
            self, "PublicKeyHandler", "signing_public_key", handler="on_event",
            timeout=cdk.Duration.seconds(30),
            description="neo-edge: reads the public key of the artifact signing key")
        handler.add_to_role_policy(iam.PolicyStatement(
            actions=["kms:GetPublicKey"], resources=[self.key.key_arn]))
        framework_logs = logs.LogGroup(self, "ProviderLogGroup",
                                       retention=logs.RetentionDays.THREE_MONTHS)
        framework_role = iam.Role(
            self, "ProviderRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            inline_policies={"Logs": iam.PolicyDocument(statements=[iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[framework_logs.log_group_arn])])})
        provider = cr.Provider(self, "Provider", on_event_handler=handler,
                               framework_on_event_role=framework_role, log_group=framework_logs)
        framework = provider.node.find_child("framework-onEvent")
        allow_redundant_depends_on(framework)
        cdk.Validations.of(framework_role.node.find_child("DefaultPolicy")).acknowledge(
            cdk.Acknowledgment(
                id=f"AwsSolutions::AwsSolutions-IAM5[Resource::<{_logical_id(handler)}.Arn>:*]",
                reason="the CDK Provider framework invokes its handler function by ARN with a "
                       "version or alias qualifier (<function arn>:*); the wildcard covers "
                       "only qualifiers of that one function"))
        _checkov.invoked_synchronously(handler, "the CDK Provider framework's function")
        _checkov.skip(
            framework, "CKV_AWS_116",
            "CloudFormation invokes it asynchronously and waits for the answer it sends to the "
            "event's callback URL (FAILED on any error of its own); an event it never ran on "
            "fails the stack operation at the custom resource's timeout, which a dead-letter "
            "queue would not change")
        self.public_key_resource = cdk.CustomResource(
            self, "PublicKey", service_token=provider.service_token,
            resource_type="Custom::NeoEdgeSigningPublicKey",
            properties={"KeyId": self.key.key_arn})
        self.public_key_resource.node.add_dependency(handler.role.node.find_child("DefaultPolicy"))
        self.public_key = self.public_key_resource.get_att_string("PublicKey")
        self.public_key_pem = self.public_key_resource.get_att_string("PublicKeyPem")
        self.fingerprint = self.public_key_resource.get_att_string("Fingerprint")

    def grant_sign(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` (the build that compiles models) sign with the key: ``kms:Sign``
        only. It then signs with ``--signing-public-key`` set to :attr:`public_key`, so it
        needs no ``kms:GetPublicKey``."""
        return self.key.grant(grantee, "kms:Sign")
