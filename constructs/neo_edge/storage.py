"""``ModelArtifactBucket``: where training data, trained and compiled models live."""

from __future__ import annotations

import re
from typing import Optional, Union

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from . import _checkov
from .interfaces import IModelArtifactBucket

__all__ = ["ACCESS_LOG_PREFIX", "ModelArtifactBucket", "as_bucket"]

#: Key prefix of the artifact bucket's access logs in the logs bucket.
ACCESS_LOG_PREFIX = "model-artifacts/"

#: Why the created access-log bucket logs no access of its own (cdk-nag S1, checkov CKV_AWS_18).
_LOG_BUCKET_UNLOGGED = (
    "this is the access-log bucket of the model artifact bucket; logging access to the log "
    "bucket itself would log its own log deliveries without end. It is private, TLS-only and "
    "only S3's log delivery service writes to it")

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_ARN = re.compile(r"^arn:aws[a-z-]*:s3:::([^/]+)$")


def as_bucket(value: Union[s3.IBucket, IModelArtifactBucket]) -> s3.IBucket:
    """The ``s3.IBucket`` of ``value``: an ``s3.IBucket`` as it is, or the ``bucket`` of an
    :class:`~neo_edge.interfaces.IModelArtifactBucket` (a ``ModelArtifactBucket``, or
    what its ``from_bucket_name`` returns)."""
    if isinstance(value, IModelArtifactBucket):
        return value.bucket
    return value


def _pattern(prefix: str) -> str:
    if cdk.Token.is_unresolved(prefix):
        return f"{prefix}*"
    if not isinstance(prefix, str) or prefix.startswith("/") or "*" in prefix:
        raise ValueError(f"prefix must be an S3 key prefix without a leading '/' or '*' "
                         f"(e.g. 'models/'); got {prefix!r}")
    return f"{prefix}*"


class ModelArtifactBucket(Construct):
    """An S3 bucket for model artifacts: KMS-encrypted, versioned, TLS only, private.

    Server access logs go to a second bucket (versioned too, logs kept a year); noncurrent
    object versions of both expire.
    Or wrap a bucket you already have (``bucket=``): nothing is created then, and the
    grants work on that bucket. A bucket known only by name (another stack's, another
    app's): :meth:`from_bucket_name` or :meth:`from_bucket_arn`. Satisfies
    :class:`~neo_edge.interfaces.IModelArtifactBucket`.

    Parameters
    ----------
    bucket:
        An existing bucket to use. Default: a bucket is created (with the settings above).
    encryption_key:
        The KMS key of the created bucket: any ``kms.IKey``, including an imported one
        (``kms.Key.from_key_arn(...)``). Default: a key with rotation is created.
        Ignored when ``bucket`` is given (that bucket's own key is used).
    noncurrent_version_expiration:
        How long overwritten or deleted versions are kept. Default: 90 days.
    removal_policy:
        What happens to the created bucket and key when removed from the stack.
        Default: retained (models are not rebuilt cheaply).
    server_access_logs_bucket:
        Where the created bucket's access logs go. Default: a logs bucket is created.

    Attributes
    ----------
    bucket, bucket_name, encryption_key:
        The bucket (the construct's ``Resource`` when created), its name, and its KMS
        key (``None`` for S3-managed encryption).
    access_logs_bucket:
        Where the access logs go (``None`` for a wrapped or imported bucket).
    """

    def __init__(self, scope: Construct, id: str, *,
                 bucket: Optional[s3.IBucket] = None,
                 encryption_key: Optional[kms.IKey] = None,
                 noncurrent_version_expiration: cdk.Duration = cdk.Duration.days(90),
                 removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
                 server_access_logs_bucket: Optional[s3.IBucket] = None) -> None:
        super().__init__(scope, id)
        self.access_logs_bucket: Optional[s3.IBucket] = None
        if bucket is not None:
            self.bucket: s3.IBucket = bucket
            self.encryption_key: Optional[kms.IKey] = bucket.encryption_key
            return
        self.encryption_key = encryption_key or kms.Key(
            self, "Key", enable_key_rotation=True, removal_policy=removal_policy,
            description="neo-edge model artifacts")
        if server_access_logs_bucket is None:
            logs_bucket = s3.Bucket(
                self, "AccessLogs",
                encryption=s3.BucketEncryption.S3_MANAGED,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                removal_policy=removal_policy,
                # Versioned, so that a deleted or overwritten log stays for the noncurrent
                # period; current logs expire after a year.
                versioned=True,
                lifecycle_rules=[s3.LifecycleRule(
                    expiration=cdk.Duration.days(365),
                    noncurrent_version_expiration=noncurrent_version_expiration)],
            )
            cdk.Validations.of(logs_bucket).acknowledge(cdk.Acknowledgment(
                id="AwsSolutions::AwsSolutions-S1", reason=_LOG_BUCKET_UNLOGGED))
            _checkov.skip(logs_bucket, "CKV_AWS_18", _LOG_BUCKET_UNLOGGED)
            server_access_logs_bucket = logs_bucket
        self.access_logs_bucket = server_access_logs_bucket
        _checkov.register(self)
        self.bucket = s3.Bucket(
            self, "Resource",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.encryption_key,
            bucket_key_enabled=True,
            versioned=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal_policy,
            lifecycle_rules=[s3.LifecycleRule(
                noncurrent_version_expiration=noncurrent_version_expiration,
                abort_incomplete_multipart_upload_after=cdk.Duration.days(7))],
        )
        # Server access logs through a bucket policy for S3's logging service (not ACLs),
        # set here so it does not depend on the app's feature flags.
        cfn_bucket: s3.CfnBucket = self.bucket.node.default_child  # type: ignore[assignment]
        cfn_bucket.logging_configuration = s3.CfnBucket.LoggingConfigurationProperty(
            destination_bucket_name=server_access_logs_bucket.bucket_name,
            log_file_prefix=ACCESS_LOG_PREFIX)
        server_access_logs_bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="S3ServerAccessLogsFromModelArtifacts",
            principals=[iam.ServicePrincipal("logging.s3.amazonaws.com")],
            actions=["s3:PutObject"],
            resources=[server_access_logs_bucket.arn_for_objects(f"{ACCESS_LOG_PREFIX}*")],
            conditions={"ArnLike": {"aws:SourceArn": self.bucket.bucket_arn},
                        "StringEquals": {"aws:SourceAccount": cdk.Stack.of(self).account}}))

    # ------------------------------------------------------------------------------
    # Importers

    @classmethod
    def from_bucket_name(cls, scope: Construct, id: str, bucket_name: str, *,
                         encryption_key: Optional[kms.IKey] = None) -> "ModelArtifactBucket":
        """An artifact bucket that exists already, by name (another stack's or app's).

        Nothing is created: the grants (``grant_read_models``, ``grant_write_models``,
        and those of the constructs it is given to) are IAM statements on that bucket
        name, in this stack.

        Parameters
        ----------
        scope, id:
            Where the imported bucket goes.
        bucket_name:
            The bucket's name (3 to 63 lowercase letters, digits, ``.`` and ``-``); a
            token is taken as it is.
        encryption_key:
            The bucket's KMS key (``kms.Key.from_key_arn(...)``), so that grants
            include decrypting and encrypting with it. Default: no key; the bucket is
            taken to use S3-managed encryption.
        """
        _check_bucket_name("bucket_name", bucket_name)
        return _ImportedModelArtifactBucket(scope, id, bucket_name=bucket_name,
                                            encryption_key=encryption_key)

    @classmethod
    def from_bucket_arn(cls, scope: Construct, id: str, bucket_arn: str, *,
                        encryption_key: Optional[kms.IKey] = None) -> "ModelArtifactBucket":
        """An artifact bucket that exists already, by ARN (``arn:aws:s3:::<name>``).

        As :meth:`from_bucket_name`; a token is taken as it is.
        """
        if not cdk.Token.is_unresolved(bucket_arn):
            match = _BUCKET_ARN.match(bucket_arn) if isinstance(bucket_arn, str) else None
            if match is None:
                raise ValueError(f"bucket_arn must be an S3 bucket ARN like "
                                 f"arn:aws:s3:::my-bucket; got {bucket_arn!r}")
            _check_bucket_name("bucket_arn's bucket name", match.group(1))
        return _ImportedModelArtifactBucket(scope, id, bucket_arn=bucket_arn,
                                            encryption_key=encryption_key)

    # ------------------------------------------------------------------------------

    @property
    def bucket_name(self) -> str:
        """The bucket's name."""
        return self.bucket.bucket_name

    def s3_uri(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return self.bucket.s3_url_for_object(key) if key else f"s3://{self.bucket.bucket_name}"

    def grant_read_models(self, grantee: iam.IGrantable, prefix: str = "") -> iam.Grant:
        """Read objects under ``prefix`` (and decrypt them). Default: the whole bucket."""
        return self.bucket.grant_read(grantee, _pattern(prefix))

    def grant_write_models(self, grantee: iam.IGrantable, prefix: str = "") -> iam.Grant:
        """Write objects under ``prefix`` (and encrypt them). Default: the whole bucket."""
        return self.bucket.grant_put(grantee, _pattern(prefix))


class _ImportedModelArtifactBucket(ModelArtifactBucket):
    """What :meth:`ModelArtifactBucket.from_bucket_name` / ``from_bucket_arn`` return:
    the same grants, on a bucket this app does not manage (nothing is created)."""

    def __init__(self, scope: Construct, id: str, *, bucket_name: Optional[str] = None,
                 bucket_arn: Optional[str] = None,
                 encryption_key: Optional[kms.IKey] = None) -> None:
        # Not ModelArtifactBucket.__init__: that one creates the bucket.
        Construct.__init__(self, scope, id)
        self.access_logs_bucket = None
        self.bucket = s3.Bucket.from_bucket_attributes(
            self, "Resource", bucket_name=bucket_name, bucket_arn=bucket_arn,
            encryption_key=encryption_key)
        self.encryption_key = encryption_key


def _check_bucket_name(what: str, name: str) -> None:
    if cdk.Token.is_unresolved(name):
        return
    if not isinstance(name, str) or not _BUCKET_NAME.match(name) or ".." in name:
        raise ValueError(f"{what} must be 3 to 63 lowercase letters, digits, '.' or '-', "
                         f"starting and ending with a letter or digit; got {name!r}")
