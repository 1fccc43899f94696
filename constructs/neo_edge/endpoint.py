"""``CloudInferenceEndpoint``: a Neo-compiled model served by a SageMaker endpoint."""

from __future__ import annotations

from typing import Optional, Union

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from ._sagemaker_job import RolePolicy, grant_key, sagemaker_execution_role
from .choices import (Framework, InstanceType, NeoInferenceImage, TargetDevice,
                      as_instance_type, as_target)
from .compilation import NeoCompilationJob
from .interfaces import IModelArtifactBucket
from .storage import as_bucket

__all__ = ["CloudInferenceEndpoint", "NVME_FAMILIES", "VARIANT"]

#: Instance families whose volumes are local NVMe: an EndpointConfig KmsKeyId is refused.
NVME_FAMILIES = frozenset({"ml.g4dn", "ml.g5", "ml.p3dn", "ml.p4d", "ml.c5d", "ml.m5d",
                           "ml.r5d", "ml.c6gd", "ml.m6gd"})
VARIANT = "AllTraffic"


def _hosting_families() -> str:
    from neo_edge_runtime.targets import TARGET_DEVICES
    return ", ".join(sorted(t.name for t in TARGET_DEVICES.values() if t.instance_family))


class CloudInferenceEndpoint(Construct):
    """SageMaker Model (a Neo inference container) + EndpointConfig + Endpoint, autoscaled.

    The instance type must be of the family the model was compiled for
    (``ml_c5`` -> ``ml.c5.*``); a mismatch fails at synth.

    Parameters
    ----------
    model:
        A ``NeoCompilationJob`` for a SageMaker hosting target (``ml_c5``, ``ml_m5``,
        ``ml_p3``, ...), or the key of a compiled model in ``bucket`` (then ``target``
        and ``framework`` are required).
    bucket:
        With a model key: the bucket holding it (an ``s3.IBucket`` or an
        :class:`~neo_edge.interfaces.IModelArtifactBucket`). Default: the compilation
        job's bucket.
    target:
        With a model key: the ``TargetDevice`` it was compiled for.
    framework, framework_version:
        With a model key: pick the Neo inference container. Ignored for a job.
    image:
        The serving container. Default: the image the compilation job reports (for a
        job), or Neo's container for the framework and region (for a model key).
    instance_type:
        Must be of the target's family. Default: that family's ``xlarge``
        (``ml.p3.2xlarge`` for ``ml_p3``).
    initial_instance_count:
        Default: the autoscaling minimum.
    min_capacity, max_capacity:
        Autoscaling bounds. Default: 1 and 2.
    invocations_per_instance:
        Autoscaling target (invocations per instance per minute). Default: 100.
    encryption_key:
        Encrypts the instances' storage volumes and the data capture: any ``kms.IKey``,
        including an imported one (``kms.Key.from_key_arn(...)``). Default: the
        bucket's key (not for families with NVMe instance storage, which SageMaker
        encrypts itself and refuses a key for).
    data_capture:
        Capture requests and responses to ``data_capture_prefix``. Default: off.
    data_capture_prefix:
        Default: ``data-capture/<id>/``.
    data_capture_sampling_percentage:
        Default: 100.
    role:
        The role the model runs as. Default: a role that reads the model's prefix, uses
        the key and writes the endpoint's logs only.
    """

    def __init__(
        self, scope: Construct, id: str, *,
        model: Union[NeoCompilationJob, str],
        bucket: Union[None, s3.IBucket, IModelArtifactBucket] = None,
        target: Union[None, str, TargetDevice] = None,
        framework: Union[None, str, Framework] = None,
        framework_version: Optional[str] = None,
        image: Optional[NeoInferenceImage] = None,
        instance_type: Union[None, str, InstanceType] = None,
        initial_instance_count: Optional[int] = None,
        min_capacity: int = 1,
        max_capacity: int = 2,
        invocations_per_instance: int = 100,
        encryption_key: Optional[kms.IKey] = None,
        data_capture: bool = False,
        data_capture_prefix: Optional[str] = None,
        data_capture_sampling_percentage: int = 100,
        role: Optional[iam.IRole] = None,
    ) -> None:
        super().__init__(scope, id)
        # Checks first.
        if bucket is not None:
            bucket = as_bucket(bucket)
        if isinstance(model, NeoCompilationJob):
            self.target = model.target
            bucket = bucket or model.bucket
            model_uri = model.compiled_model_uri
            model_prefix = model.output_prefix
            image = image or NeoInferenceImage.from_uri(model.inference_image)
        elif isinstance(model, str) and model and not model.startswith("s3://"):
            if bucket is None or target is None or (framework is None and image is None):
                raise ValueError("a model given by key needs bucket, target and framework "
                                 "(or image); got "
                                 f"bucket={bucket!r}, target={target!r}, framework={framework!r}")
            self.target = as_target(target)
            model_uri = bucket.s3_url_for_object(model)
            model_prefix = model
            if image is None:
                fw = framework if isinstance(framework, Framework) else Framework.of(framework)
                image = NeoInferenceImage.for_framework(
                    fw, version=framework_version,
                    gpu=getattr(self.target, "is_nvidia", False))
        else:
            raise ValueError(f"model must be a NeoCompilationJob or the key of a compiled "
                             f"model in bucket; got {model!r}")
        family = self.target.instance_family
        if family is None:
            raise ValueError(f"model was compiled for {self.target.name}, which is no SageMaker "
                             f"hosting target; compile it for one of {_hosting_families()} to "
                             f"serve it from an endpoint")
        if instance_type is None:
            instance_type = f"{family}.2xlarge" if family == "ml.p3" else f"{family}.xlarge"
        self.instance_type = as_instance_type(instance_type)
        if self.instance_type.family is not None and self.instance_type.family != family:
            raise ValueError(f"instance_type {self.instance_type.name} does not match the "
                             f"compilation target {self.target.name}; use an {family}.* "
                             f"instance type (e.g. {family}.xlarge)")
        for name, value in (("min_capacity", min_capacity), ("max_capacity", max_capacity),
                            ("invocations_per_instance", invocations_per_instance)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if max_capacity < min_capacity:
            raise ValueError(f"max_capacity must be at least min_capacity ({min_capacity}); "
                             f"got {max_capacity}")
        count = initial_instance_count if initial_instance_count is not None else min_capacity
        if not min_capacity <= count <= max_capacity:
            raise ValueError(f"initial_instance_count must be between min_capacity and "
                             f"max_capacity ({min_capacity}-{max_capacity}); got {count}")
        if not 0 < data_capture_sampling_percentage <= 100:
            raise ValueError(f"data_capture_sampling_percentage must be 1-100; got "
                             f"{data_capture_sampling_percentage}")
        key = encryption_key or bucket.encryption_key
        volume_key = None if family in NVME_FAMILIES or (
            self.instance_type.family in NVME_FAMILIES) else key

        if role is None:
            role = sagemaker_execution_role(self, "Role", log_group_family="Endpoints",
                                            description=f"SageMaker model {self.node.path}")
        self.role: iam.IRole = role
        policy = RolePolicy(self, role)
        policy.read(bucket, model_prefix)
        grant_key(key, role)
        capture_config = None
        if data_capture:
            prefix = data_capture_prefix or f"data-capture/{id}/"
            policy.write(bucket, prefix)
            capture_config = sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
                enable_capture=True,
                initial_sampling_percentage=data_capture_sampling_percentage,
                destination_s3_uri=bucket.s3_url_for_object(prefix.rstrip("/")),
                kms_key_id=key.key_arn if key is not None else None,
                capture_options=[
                    sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Input"),
                    sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Output")])
        policy.acknowledge()

        self.model = sagemaker.CfnModel(
            self, "Model", execution_role_arn=role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image.bind(self), model_data_url=model_uri))
        default_policy = role.node.try_find_child("DefaultPolicy")
        if default_policy is not None:
            self.model.node.add_dependency(default_policy)
        self.endpoint_config = sagemaker.CfnEndpointConfig(
            self, "Config",
            kms_key_id=volume_key.key_arn if volume_key is not None else None,
            data_capture_config=capture_config,
            production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name=VARIANT, model_name=self.model.attr_model_name,
                initial_instance_count=count, instance_type=self.instance_type.name,
                initial_variant_weight=1)])
        self.endpoint = sagemaker.CfnEndpoint(
            self, "Resource", endpoint_config_name=self.endpoint_config.attr_endpoint_config_name)
        #: The endpoint's name.
        self.endpoint_name: str = self.endpoint.attr_endpoint_name
        #: The endpoint's ARN.
        self.endpoint_arn: str = self.endpoint.ref

        self.scalable_target = appscaling.ScalableTarget(
            self, "Scaling",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{self.endpoint_name}/variant/{VARIANT}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=min_capacity, max_capacity=max_capacity)
        self.scalable_target.scale_to_track_metric(
            "Invocations", target_value=invocations_per_instance,
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
            scale_in_cooldown=cdk.Duration.minutes(5), scale_out_cooldown=cdk.Duration.minutes(1))

    def grant_invoke(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` call InvokeEndpoint on this endpoint."""
        return iam.Grant.add_to_principal(grantee=grantee, actions=["sagemaker:InvokeEndpoint"],
                                          resource_arns=[self.endpoint_arn])

    def metric(self, metric_name: str, **options) -> cloudwatch.Metric:
        """A metric of the endpoint's variant (namespace ``AWS/SageMaker``)."""
        return cloudwatch.Metric(namespace="AWS/SageMaker", metric_name=metric_name,
                                 dimensions_map={"EndpointName": self.endpoint_name,
                                                 "VariantName": VARIANT}, **options)

    def metric_invocations(self, **options) -> cloudwatch.Metric:
        """Invocations. Default: sum over 5 minutes."""
        return self.metric("Invocations", **{"statistic": "Sum", **options})

    def metric_model_latency(self, **options) -> cloudwatch.Metric:
        """ModelLatency in microseconds. Default: average over 5 minutes."""
        return self.metric("ModelLatency", **{"statistic": "Average", **options})
