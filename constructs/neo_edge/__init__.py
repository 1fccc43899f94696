"""neo_edge: AWS CDK constructs for the SageMaker Neo + AWS IoT Greengrass V2 path.

Train once, run anywhere::

    from neo_edge import NeoEdgePipeline

    NeoEdgePipeline(stack, "Digits", runtime_bundles={...}, ...)

or part by part: :class:`ModelArtifactBucket`, :class:`TrainingJob`,
:class:`NeoCompilationJob` / :class:`NeoCompilationSet`, :class:`CloudInferenceEndpoint`,
:class:`EdgeFleet`, :class:`EdgeInferenceComponent`, :class:`EdgeLambdaComponent`,
:class:`EdgeDeployment`, :class:`EdgeTelemetry` and :class:`RetrainPipeline`. Target and
framework choices (:class:`TargetDevice`, :class:`Framework`, ...) are backed by the same
table the local compiler uses (``neo_edge_runtime.targets``).
"""

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
from .endpoint import CloudInferenceEndpoint  # noqa: F401
from .fleet import EdgeFleet  # noqa: F401
from .component import CompiledModel, DeviceMount, EventSource, IsolationMode, VolumeMount  # noqa: F401
from .component import EdgeInferenceComponent, EdgeLambdaComponent  # noqa: F401
from .deployment import AbortFailureType, ComponentUpdateAction, FailureHandling  # noqa: F401
from .deployment import DeploymentComponent, EdgeDeployment  # noqa: F401
from .telemetry import EdgeTelemetry  # noqa: F401
from .retrain import RetrainPipeline  # noqa: F401
from .pipeline import NeoEdgePipeline  # noqa: F401
