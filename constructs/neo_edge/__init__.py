"""neo_edge: AWS CDK constructs for the SageMaker Neo + AWS IoT Greengrass V2 path.

Train once, run anywhere::

    from neo_edge import NeoEdgePipeline

    NeoEdgePipeline(stack, "Digits", runtime_bundles={...}, ...)

or part by part: :class:`ModelArtifactBucket`, :class:`TrainingJob`,
:class:`EdgeCompilationJob` / :class:`EdgeCompilationSet` (neo-edge's compiler in AWS
CodeBuild, for devices), :class:`NeoCompilationJob` / :class:`NeoCompilationSet` (SageMaker
Neo, for endpoints), :class:`CloudInferenceEndpoint`,
:class:`EdgeFleet`, :class:`EdgeInferenceComponent`, :class:`EdgeLambdaComponent`,
:class:`EdgeDeployment`, :class:`EdgeTelemetry` and :class:`RetrainPipeline`. Target and
framework choices (:class:`TargetDevice`, :class:`Framework`, ...) are backed by the same
table the local compiler uses (``neo_edge_runtime.targets``).

Across stacks and apps: constructs take each other through the interfaces of
:mod:`neo_edge.interfaces` (:class:`IEdgeFleet`, :class:`IEdgeComponent`, ...), so a
construct of another stack can be passed as it is (CDK exports and imports what is
needed), and one of another app is imported by name:
``ModelArtifactBucket.from_bucket_name``, ``EdgeFleet.from_thing_group_name``,
``EdgeInferenceComponent.from_component_version``, ``EdgeDeployment.from_deployment_id``,
``RetrainPipeline.from_state_machine_arn``.

The package re-exports every public class of its modules; helper functions and
constants stay in their modules (``neo_edge.telemetry.METRICS_NAMESPACE``, ...).
"""

from .interfaces import (ICompilationOutput, IEdgeComponent, IEdgeDeployment,  # noqa: F401
                         IEdgeFleet, IModelArtifactBucket, IRetrainPipeline)
from .storage import ModelArtifactBucket  # noqa: F401
from .choices import AlgorithmImage  # noqa: F401
from .choices import CompilerOptions  # noqa: F401
from .choices import Framework  # noqa: F401
from .choices import InstanceType  # noqa: F401
from .choices import NeoInferenceImage  # noqa: F401
from .choices import TargetDevice  # noqa: F401
from .choices import TargetPlatform  # noqa: F401
from .training import TrainingJob  # noqa: F401
from .compilation import NeoCompilationJob  # noqa: F401
from .compilation import NeoCompilationSet  # noqa: F401
from .edge_compilation import EdgeCompilationJob, EdgeCompilationSet  # noqa: F401
from .endpoint import CloudInferenceEndpoint  # noqa: F401
from .fleet import EdgeFleet  # noqa: F401
from .component import CompiledModel, DeviceMount, EventSource, IsolationMode, VolumeMount  # noqa: F401
from .component import EdgeInferenceComponent, EdgeLambdaComponent  # noqa: F401
from .deployment import AbortFailureType, ComponentUpdateAction, FailureHandling  # noqa: F401
from .deployment import DeploymentComponent, EdgeDeployment  # noqa: F401
from .telemetry import EdgeTelemetry  # noqa: F401
from .retrain import RetrainPipeline, SageMakerJobStates  # noqa: F401
from .pipeline import NeoEdgePipeline  # noqa: F401
from .signing import ArtifactSigningKey  # noqa: F401
from .canary import CanaryRollout  # noqa: F401
from .choices import TargetError  # noqa: F401

__all__ = [
    # interfaces
    "ICompilationOutput", "IEdgeComponent", "IEdgeDeployment", "IEdgeFleet",
    "IModelArtifactBucket", "IRetrainPipeline",
    # constructs
    "ArtifactSigningKey", "CanaryRollout", "CloudInferenceEndpoint", "EdgeCompilationJob", "EdgeCompilationSet", "EdgeDeployment",
    "EdgeFleet", "EdgeInferenceComponent",
    "EdgeLambdaComponent", "EdgeTelemetry", "ModelArtifactBucket", "NeoCompilationJob",
    "NeoCompilationSet", "NeoEdgePipeline", "RetrainPipeline", "TrainingJob",
    # choices and values
    "AbortFailureType", "AlgorithmImage", "CompiledModel", "CompilerOptions",
    "ComponentUpdateAction", "DeploymentComponent", "DeviceMount", "EventSource",
    "FailureHandling", "Framework", "InstanceType", "IsolationMode", "NeoInferenceImage",
    "SageMakerJobStates", "TargetDevice", "TargetError", "TargetPlatform", "VolumeMount",
]
