"""Interfaces: what one construct needs from another, so that a resource defined in
another stack, or in another app altogether, can stand in for ours.

Each is a ``typing.Protocol``: a construct of this library satisfies it, and so does
what its importer returns (``ModelArtifactBucket.from_bucket_name``,
``EdgeFleet.from_thing_group_name``, ``EdgeInferenceComponent.from_component_version``,
``EdgeDeployment.from_deployment_id``, ``RetrainPipeline.from_state_machine_arn``), as
does any object of yours with the same members. The parameters of our constructs are
typed with these interfaces (``EdgeDeployment(fleet: IEdgeFleet, ...)``), the way
aws-cdk-lib's take ``s3.IBucket`` rather than ``s3.Bucket``.

- :class:`IModelArtifactBucket`: where models live (``ModelArtifactBucket``).
- :class:`IEdgeFleet`: a fleet of Greengrass core devices (``EdgeFleet``).
- :class:`IEdgeComponent`: a Greengrass component version (``EdgeInferenceComponent``,
  ``EdgeLambdaComponent``).
- :class:`IEdgeDeployment`: a Greengrass deployment to a fleet (``EdgeDeployment``).
- :class:`IRetrainPipeline`: the retraining state machine (``RetrainPipeline``).
- :class:`ICompilationOutput`: a compiled model in S3 and the target it was compiled
  for (``EdgeCompilationJob``, ``NeoCompilationJob``), what
  ``CompiledModel.from_compilation_job`` reads.

The interfaces are ``runtime_checkable``: ``isinstance(x, IEdgeFleet)`` tells whether
``x`` has every member (not their types). The constructs themselves check, when they
are given an object, only the members they use, and say which is missing.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union, runtime_checkable

from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from neo_edge_runtime import targets as _targets

from .choices import TargetDevice, TargetPlatform

__all__ = [
    "ICompilationOutput", "IEdgeComponent", "IEdgeDeployment", "IEdgeFleet",
    "IModelArtifactBucket", "IRetrainPipeline",
]


@runtime_checkable
class IModelArtifactBucket(Protocol):
    """A bucket for training data, trained and compiled models.

    Satisfied by :class:`~neo_edge.storage.ModelArtifactBucket` and by what
    ``ModelArtifactBucket.from_bucket_name`` / ``from_bucket_arn`` return. Accepted
    wherever a construct takes a model bucket (``TrainingJob(bucket=...)``,
    ``NeoCompilationJob(bucket=...)``, ``EdgeFleet(artifact_bucket=...)``,
    ``NeoEdgePipeline(bucket=...)``), next to a plain ``s3.IBucket``.
    """

    @property
    def bucket(self) -> s3.IBucket:
        """The S3 bucket."""
        ...

    @property
    def bucket_name(self) -> str:
        """The bucket's name."""
        ...

    @property
    def encryption_key(self) -> Optional[kms.IKey]:
        """The KMS key objects are encrypted with; ``None`` for S3-managed encryption
        (or when the key is unknown, as for a bucket imported without one)."""
        ...

    def s3_uri(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        ...

    def grant_read_models(self, grantee: iam.IGrantable, prefix: str = "") -> iam.Grant:
        """Let ``grantee`` read objects under ``prefix`` (and decrypt them)."""
        ...

    def grant_write_models(self, grantee: iam.IGrantable, prefix: str = "") -> iam.Grant:
        """Let ``grantee`` write objects under ``prefix`` (and encrypt them)."""
        ...


@runtime_checkable
class IEdgeFleet(Protocol):
    """A fleet of Greengrass V2 core devices: an IoT thing group that deployments target.

    Satisfied by :class:`~neo_edge.fleet.EdgeFleet` and by what
    ``EdgeFleet.from_thing_group_name`` returns. ``EdgeDeployment`` reads
    ``thing_group_arn`` and ``fleet_name`` and grants the ``token_exchange_role`` read
    on its components' artifacts; ``EdgeTelemetry`` reads ``topic_prefix`` and
    ``fleet_name``; ``RetrainPipeline`` calls ``grant_deploy`` and
    ``allow_artifact_read``.
    """

    @property
    def fleet_name(self) -> str:
        """The fleet's name (the thing group's name for fleets of this library)."""
        ...

    @property
    def thing_group_name(self) -> str:
        """The IoT thing group's name."""
        ...

    @property
    def thing_group_arn(self) -> str:
        """The IoT thing group's ARN: a deployment's ``TargetArn``."""
        ...

    @property
    def topic_prefix(self) -> str:
        """Devices publish on ``<topic_prefix>/<thing name>/...``."""
        ...

    @property
    def token_exchange_role(self) -> Optional[iam.IRole]:
        """The role devices get credentials for (through the role alias); ``None``
        when unknown (a fleet imported without it): artifact grants are then left to
        whoever owns the role."""
        ...

    def allow_artifact_read(self, bucket: Union[s3.IBucket, IModelArtifactBucket],
                            *key_patterns: str) -> iam.Grant:
        """Let the devices download ``bucket`` objects matching ``key_patterns``."""
        ...

    def grant_deploy(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` create, read and cancel Greengrass deployments to the fleet."""
        ...

    def grant_publish_to_devices(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` publish on the fleet's application topics."""
        ...

    def grant_describe(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read the thing group and list its members."""
        ...


@runtime_checkable
class IEdgeComponent(Protocol):
    """A Greengrass V2 component version that a deployment can name.

    Satisfied by :class:`~neo_edge.component.EdgeInferenceComponent`,
    :class:`~neo_edge.component.EdgeLambdaComponent` and what their
    ``from_component_version`` returns. ``EdgeDeployment`` deploys
    ``component_name`` at ``component_version`` and calls ``grant_artifacts_read``
    with the fleet's token exchange role.
    """

    @property
    def component_name(self) -> str:
        """The component's name (``com.example.Classifier``)."""
        ...

    @property
    def component_version(self) -> str:
        """The exact version deployed (``1.0.123``)."""
        ...

    @property
    def component_arn(self) -> str:
        """The component version's ARN."""
        ...

    def grant_artifacts_read(self, grantee: iam.IGrantable) -> Optional[iam.Grant]:
        """Let ``grantee`` download the component's artifacts; ``None`` when there is
        nothing (known) to grant."""
        ...


@runtime_checkable
class IEdgeDeployment(Protocol):
    """A Greengrass V2 deployment to a fleet.

    Satisfied by :class:`~neo_edge.deployment.EdgeDeployment` and by what
    ``EdgeDeployment.from_deployment_id`` returns. ``EdgeTelemetry`` counts the
    failures of ``deployment_id`` only.
    """

    @property
    def deployment_id(self) -> str:
        """The deployment's id (what Greengrass events carry as ``detail.deploymentId``)."""
        ...

    @property
    def deployment_name(self) -> Optional[str]:
        """The deployment's name; ``None`` when unknown (an imported deployment)."""
        ...

    @property
    def fleet(self) -> Optional[IEdgeFleet]:
        """The fleet deployed to; ``None`` when unknown (an imported deployment)."""
        ...


@runtime_checkable
class IRetrainPipeline(Protocol):
    """The retraining state machine: train, compile, publish, deploy.

    Satisfied by :class:`~neo_edge.retrain.RetrainPipeline` and by what
    ``RetrainPipeline.from_state_machine_arn`` returns: what another stack needs to
    start runs (a function, a schedule of its own) and to watch them.
    """

    @property
    def state_machine(self) -> sfn.IStateMachine:
        """The Step Functions state machine."""
        ...

    @property
    def state_machine_arn(self) -> str:
        """The state machine's ARN."""
        ...

    def grant_start_execution(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` start a run (``states:StartExecution``)."""
        ...

    def metric_failed(self, **options: Any) -> cw.Metric:
        """Runs that failed."""
        ...

    def metric_succeeded(self, **options: Any) -> cw.Metric:
        """Runs that succeeded."""
        ...


@runtime_checkable
class ICompilationOutput(Protocol):
    """A compiled model in S3 and the target it was compiled for.

    What :meth:`~neo_edge.component.CompiledModel.from_compilation_job` reads;
    satisfied by :class:`~neo_edge.edge_compilation.EdgeCompilationJob` and
    :class:`~neo_edge.compilation.NeoCompilationJob` (whose DLR-format output an
    ``EdgeInferenceComponent`` refuses: see ``artifact_format``), or by any object
    with these two members (a job of your own, a ``SimpleNamespace``). Read when
    present, not required:

    - ``target_spec`` (a ``neo_edge_runtime.targets.Target``): preferred to ``target``;
    - ``fingerprint``: a JSON-able value that changes whenever the compiled model does,
      so that a new model gives a new component version even at the same URI;
    - ``bucket`` or ``artifact_bucket`` (``s3.IBucket``) with ``compiled_model_key`` or
      ``output_prefix``: where devices must be allowed to read the model;
    - ``artifact_format``: ``"neo-edge"`` or ``"dlr"`` (SageMaker Neo's), which an edge
      component refuses.
    """

    @property
    def compiled_model_uri(self) -> str:
        """The ``s3://`` URI of the compiled model (a token is fine)."""
        ...

    @property
    def target(self) -> Union[str, TargetDevice, TargetPlatform, _targets.Target]:
        """The target compiled for: a name, a ``TargetDevice``, a ``TargetPlatform``
        or a ``Target`` of the target table."""
        ...
