"""``TrainingJob``: a SageMaker training job that runs while the stack deploys."""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence, Union

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ._sagemaker_job import (RolePolicy, SageMakerJobProvider, check_runtime, grant_key,
                             sagemaker_execution_role)
from .choices import AlgorithmImage, InstanceType, as_instance_type
from .interfaces import IModelArtifactBucket
from .storage import as_bucket

__all__ = ["TrainingJob"]

_CHANNEL_RE = r"^[A-Za-z0-9\.\-_]+$"


def _bucket_of(value: Union[s3.IBucket, IModelArtifactBucket]) -> s3.IBucket:
    return as_bucket(value)


def _check_prefix(name: str, prefix: str) -> str:
    if cdk.Token.is_unresolved(prefix):
        return prefix
    if not isinstance(prefix, str) or prefix.startswith("/") or "*" in prefix \
            or "://" in prefix:
        raise ValueError(f"{name} must be a key prefix in the bucket, without a leading '/', "
                         f"'*' or 's3://' (e.g. 'data/train/'); got {prefix!r}")
    return prefix


class TrainingJob(Construct):
    """A SageMaker training job started at deploy time and awaited (CDK Provider framework).

    The deployment fails with SageMaker's ``FailureReason`` if the job fails. The job's
    name is derived from its inputs: a change of any input starts a new job (and the old
    resource is deleted); removing the resource while its job runs stops the job.
    CloudFormation waits at most one hour for a custom resource, so ``max_runtime`` is
    capped at 50 minutes; train longer in the ``RetrainPipeline``.

    Parameters
    ----------
    bucket:
        Where inputs are read and the model is written (an ``s3.IBucket`` or an
        :class:`~neo_edge.interfaces.IModelArtifactBucket`: a ``ModelArtifactBucket``,
        or ``ModelArtifactBucket.from_bucket_name(...)``).
    algorithm_image:
        The training container: ``AlgorithmImage.xgboost()`` (resolved per region) or
        ``AlgorithmImage.from_ecr_repository(repo)``.
    input_channels:
        Channel name to key prefix in ``bucket`` (``{"train": "data/train/"}``).
    content_type:
        The MIME type of every channel (``text/csv`` for CSV with XGBoost).
        Default: the algorithm's default.
    output_prefix:
        Key prefix for the model; SageMaker writes ``<prefix><job name>/output/model.tar.gz``.
        Default: ``training/<construct id>/``.
    hyperparameters:
        Passed to the algorithm, values as strings. Default: none.
    instance_type:
        Default: ``ml.m5.xlarge``.
    instance_count:
        Default: 1.
    volume_size:
        The training volume. Default: 30 GiB.
    max_runtime:
        At most 50 minutes. Default: 45 minutes.
    use_spot_instances:
        Managed spot training, with checkpoints under ``checkpoint_prefix``. Default: off.
    max_wait:
        Spot only: how long to wait for and run on spot capacity, at least ``max_runtime``
        and at most 50 minutes. Default: ``max_runtime``.
    checkpoint_prefix:
        Spot only. Default: ``checkpoints/<construct id>/``.
    encryption_key:
        Encrypts the training volume and the model output: any ``kms.IKey``, including
        an imported one (``kms.Key.from_key_arn(...)``). Default: the bucket's key
        (S3-managed encryption when it has none).
    vpc, vpc_subnets, security_groups:
        Run the job in a VPC. Default: no VPC. ``security_groups`` default: one is created.
    role:
        The role SageMaker assumes. Default: a role is created with read access to the
        input prefixes, write access to the output (and checkpoint) prefix, the key, and
        its own log group only. A role you pass gets the same grants if it is mutable.
    run_id:
        Any string: change it to run the same inputs again (e.g. after a capacity error).
        Default: none.
    """

    def __init__(
        self, scope: Construct, id: str, *,
        bucket: Union[s3.IBucket, IModelArtifactBucket],
        algorithm_image: AlgorithmImage,
        input_channels: Mapping[str, str],
        content_type: Optional[str] = None,
        output_prefix: Optional[str] = None,
        hyperparameters: Optional[Mapping[str, Union[str, int, float]]] = None,
        instance_type: Union[str, InstanceType] = InstanceType.ML_M5_XLARGE,
        instance_count: int = 1,
        volume_size: cdk.Size = cdk.Size.gibibytes(30),
        max_runtime: cdk.Duration = cdk.Duration.minutes(45),
        use_spot_instances: bool = False,
        max_wait: Optional[cdk.Duration] = None,
        checkpoint_prefix: Optional[str] = None,
        encryption_key: Optional[kms.IKey] = None,
        vpc: Optional[ec2.IVpc] = None,
        vpc_subnets: Optional[ec2.SubnetSelection] = None,
        security_groups: Optional[Sequence[ec2.ISecurityGroup]] = None,
        role: Optional[iam.IRole] = None,
        run_id: Optional[str] = None,
    ) -> None:
        super().__init__(scope, id)
        # Checks first: nothing is created for a bad input.
        self.bucket = _bucket_of(bucket)
        if not isinstance(algorithm_image, AlgorithmImage):
            raise ValueError(f"algorithm_image must be an AlgorithmImage (e.g. "
                             f"AlgorithmImage.xgboost()); got {algorithm_image!r}")
        if not isinstance(input_channels, Mapping) or not input_channels:
            raise ValueError(f"input_channels must be a non-empty mapping of channel name to "
                             f"key prefix, e.g. {{'train': 'data/train/'}}; got {input_channels!r}")
        for channel, prefix in input_channels.items():
            if not isinstance(channel, str) or not re.match(_CHANNEL_RE, channel):
                raise ValueError(f"input channel names must be letters, digits, '.', '-' or "
                                 f"'_'; got {channel!r}")
            _check_prefix(f"input_channels[{channel!r}]", prefix)
        if not cdk.Token.is_unresolved(instance_count) and (
                not isinstance(instance_count, int) or instance_count < 1):
            raise ValueError(f"instance_count must be a positive integer; got {instance_count!r}")
        self.instance_type = as_instance_type(instance_type)
        runtime_s = check_runtime("max_runtime", max_runtime)
        stopping: dict = {"MaxRuntimeInSeconds": runtime_s}
        if use_spot_instances:
            wait_s = check_runtime("max_wait", max_wait or max_runtime)
            if wait_s < runtime_s:
                raise ValueError(f"max_wait must be at least max_runtime ({runtime_s} "
                                 f"seconds); got {wait_s} seconds")
            stopping["MaxWaitTimeInSeconds"] = wait_s
        elif max_wait is not None or checkpoint_prefix is not None:
            raise ValueError("max_wait and checkpoint_prefix apply to managed spot training "
                             "only; set use_spot_instances=True or leave them out")
        output_prefix = _check_prefix("output_prefix",
                                      output_prefix or f"training/{id}/")
        hyper = {str(k): str(v) for k, v in (hyperparameters or {}).items()}
        key = encryption_key or self.bucket.encryption_key

        # The role SageMaker assumes.
        if role is None:
            role = sagemaker_execution_role(self, "Role", log_group_family="TrainingJobs",
                                            description=f"SageMaker training job {self.node.path}")
        self.role: iam.IRole = role
        policy = RolePolicy(self, role)
        for prefix in input_channels.values():
            policy.read(self.bucket, prefix)
        policy.write(self.bucket, output_prefix)
        grant_key(key, role)
        image = algorithm_image.bind(self, role)

        request: dict = {
            "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
            "RoleArn": role.role_arn,
            "InputDataConfig": [self._channel(name, prefix, content_type)
                                for name, prefix in input_channels.items()],
            "OutputDataConfig": {"S3OutputPath": self.bucket.s3_url_for_object(
                output_prefix.rstrip("/"))},
            "ResourceConfig": {"InstanceType": self.instance_type.name,
                               "InstanceCount": instance_count,
                               "VolumeSizeInGB": int(volume_size.to_gibibytes())},
            "StoppingCondition": stopping,
            "EnableInterContainerTrafficEncryption": True,
        }
        if hyper:
            request["HyperParameters"] = hyper
        if key is not None:
            request["OutputDataConfig"]["KmsKeyId"] = key.key_arn
            request["ResourceConfig"]["VolumeKmsKeyId"] = key.key_arn
        if use_spot_instances:
            checkpoint = _check_prefix("checkpoint_prefix",
                                       checkpoint_prefix or f"checkpoints/{id}/")
            policy.read(self.bucket, checkpoint)
            policy.write(self.bucket, checkpoint)
            request["EnableManagedSpotTraining"] = True
            request["CheckpointConfig"] = {"S3Uri": self.bucket.s3_url_for_object(
                checkpoint.rstrip("/"))}
        if vpc is not None:
            request["VpcConfig"] = self._vpc_config(vpc, vpc_subnets, security_groups, role)
        policy.acknowledge()

        provider = SageMakerJobProvider.of(self)
        self.resource = provider.job_resource(
            self, "Resource", kind="training", resource_type="Custom::SageMakerTrainingJob",
            request=request, role=role, run_id=run_id)

        #: The job's name (``<stack>-<id>-<hash of the inputs>``).
        self.job_name: str = self.resource.get_att_string("JobName")
        #: The job's ARN.
        self.job_arn: str = self.resource.get_att_string("JobArn")
        #: ``s3://.../<output prefix>/<job name>/output/model.tar.gz``.
        self.model_data_uri: str = self.resource.get_att_string("ModelArtifacts")
        #: The prefix the model was written under.
        self.output_prefix = output_prefix
        #: Channel name to key prefix, as given.
        self.input_channels: dict = dict(input_channels)
        #: The ``CreateTrainingJob`` request without ``TrainingJobName`` (tokens unresolved):
        #: what a ``RetrainPipeline`` sends again at run time.
        self.request: dict = request

    def _channel(self, name: str, prefix: str, content_type: Optional[str]) -> dict:
        channel: dict = {"ChannelName": name, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": self.bucket.s3_url_for_object(prefix),
            "S3DataDistributionType": "FullyReplicated"}}}
        if content_type:
            channel["ContentType"] = content_type
        return channel

    def _vpc_config(self, vpc: ec2.IVpc, subnets: Optional[ec2.SubnetSelection],
                    groups: Optional[Sequence[ec2.ISecurityGroup]], role: iam.IRole) -> dict:
        selected = vpc.select_subnets(**(subnets._values if subnets is not None else {
            "subnet_type": ec2.SubnetType.PRIVATE_WITH_EGRESS}))
        if not groups:
            groups = [ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc,
                                        description=f"SageMaker training job {self.node.path}")]
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                     "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                     "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs",
                     "ec2:DescribeDhcpOptions", "ec2:DescribeSubnets",
                     "ec2:DescribeSecurityGroups"],
            resources=["*"]))
        if isinstance(role, iam.Role):
            cdk.Validations.of(role.node.find_child("DefaultPolicy")).acknowledge(
                cdk.Acknowledgment(
                    id="AwsSolutions::AwsSolutions-IAM5[Resource::*]",
                    reason="a training job in a VPC attaches network interfaces SageMaker "
                           "creates at run time; the EC2 network-interface and Describe* "
                           "actions it needs take no resource-level permissions before the "
                           "interface exists (as in AWS's AmazonSageMakerFullAccess)"))
        return {"SecurityGroupIds": [g.security_group_id for g in groups],
                "Subnets": selected.subnet_ids}
