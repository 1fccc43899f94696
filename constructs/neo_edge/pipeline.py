"""``NeoEdgePipeline``: the whole path in one construct.

Artifact bucket -> training job -> Neo compilation for every target -> the Greengrass
inference component -> the fleet and its deployment -> telemetry, plus a retraining
pipeline and, optionally, a SageMaker endpoint. A dozen lines deploy it::

    from neo_edge import NeoEdgePipeline

    NeoEdgePipeline(stack, "Digits",
                    runtime_bundles={"aarch64": "build/bundle/aarch64",
                                     "x86_64": "build/bundle/x86_64"},
                    targets=["rasp4b", "jetson_xavier", "ml_c5"],
                    hyperparameters={"objective": "multi:softprob", "num_class": 10,
                                     "num_round": 50},
                    model_name="digits")

Each part can be replaced by one you built (``bucket=``, ``training_job=``,
``compilation=``, ``component=``, ``fleet=``, ``deployment=``, ``telemetry=``); the
pipeline then wires yours instead of creating its own, and the props that only
configure the replaced part are refused rather than silently ignored.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping, Optional, Sequence, Union

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from .choices import (AlgorithmImage, CompilerOptions, Framework, InstanceType, TargetDevice,
                      TargetPlatform, as_target)
from .compilation import NeoCompilationJob, NeoCompilationSet
from .component import EdgeInferenceComponent
from .deployment import EdgeDeployment
from .endpoint import CloudInferenceEndpoint
from .fleet import EdgeFleet
from .interfaces import IEdgeFleet, IModelArtifactBucket
from .retrain import RetrainPipeline
from .storage import ModelArtifactBucket
from .telemetry import EdgeTelemetry
from .training import TrainingJob

__all__ = ["DEFAULT_TARGETS", "DEFAULT_XGBOOST_HYPERPARAMETERS", "NeoEdgePipeline"]

#: One ARM board, one NVIDIA Jetson and one Intel cloud instance family.
DEFAULT_TARGETS = ("rasp4b", "jetson_xavier", "ml_c5")
#: What the built-in XGBoost algorithm needs at least.
DEFAULT_XGBOOST_HYPERPARAMETERS = {"num_round": "100"}

_COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9-_.]+$")


def _default_component_name(id: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "", id) or "Model"
    return f"com.neoedge.{cleaned}"


class NeoEdgePipeline(Construct):
    """Train once, run anywhere: the cloud side of neo-edge wired in one construct.

    Parameters
    ----------
    runtime_bundles:
        The device bundle of the edge runtime per architecture (``aarch64``,
        ``x86_64``): a ``.zip`` or a folder with ``neo_edge_runtime/`` and
        ``edge_inference.py`` at its root (``make bundle`` builds them into
        ``build/bundle/<arch>/``). One for the architecture of every target. Required
        unless ``component`` is given.
    device_wheels:
        Per architecture, a folder (or ``.zip``) of the wheels of the devices' Python
        prerequisites, for devices that cannot reach the package index: see
        ``EdgeInferenceComponent``. Default: devices install them from PyPI.
    targets:
        Neo targets to compile for (names, ``TargetDevice`` or ``TargetPlatform``).
        Default: ``rasp4b``, ``jetson_xavier`` and ``ml_c5``.
    component_name:
        The Greengrass component. Default: ``com.neoedge.<id>``.
    model_name:
        The model name the devices report (the artifact manifest's model name); the
        telemetry's metrics and alarms are per model. Default: ``model``.
    training_data_prefix:
        Where the training data lies in the bucket (the ``train`` channel); new objects
        under it start the retraining pipeline. The deploy-time training job reads it,
        so put the data there before the first deployment (or pass ``model``).
        Default: ``datasets/train/``.
    algorithm_image:
        The training container. Default: SageMaker's built-in XGBoost 1.7-1.
    hyperparameters:
        Default: ``{"num_round": "100"}`` for the built-in XGBoost, else none.
    content_type:
        The training data's MIME type. Default: ``text/csv`` for the built-in XGBoost,
        else the algorithm's default.
    training_instance_type:
        Default: ``ml.m5.xlarge``.
    model:
        The key of a trained model (``model.tar.gz``) in the bucket: no training job
        then, and no retraining. Default: a training job trains it.
    framework, framework_version, data_input_config, compiler_options_per_target:
        How Neo reads the model (see ``NeoCompilationJob``). Default: XGBoost, which
        takes no version and no shapes.
    inference_configuration:
        The component's configuration overrides (``inputTopic``, ``threadCount``,
        ...). Default: the recipe builder's, with the fleet's topic prefix.
    fleet_name, thing_names, fleet_provisioning:
        Passed to the ``EdgeFleet`` created. Default: a generated name, no things, no
        fleet provisioning.
    enable_telemetry:
        The results topic rule, metrics, alarms and dashboard. Default: on.
    alert_topic:
        Where telemetry alarms and retraining failures go: any ``sns.ITopic``,
        including an imported one (``sns.Topic.from_topic_arn(...)``). Default: the
        telemetry's own topic (or the retraining pipeline's, without telemetry).
    endpoint_target:
        Also serve the model compiled for this target (one of ``targets`` with a
        SageMaker instance family, e.g. ``ml_c5``) from a SageMaker endpoint.
        Default: no endpoint (an endpoint bills by the hour).
    endpoint_instance_type:
        Default: the target's family in ``xlarge``.
    enable_retraining:
        The ``RetrainPipeline``: new data under ``training_data_prefix`` (or
        ``retrain_schedule``) retrains, recompiles, publishes and deploys.
        Default: on whenever there is a training job.
    retrain_schedule:
        Also retrain on this schedule. Default: only on new data.
    retrain_trigger_suffixes:
        Only new keys ending in one of these start a retraining. Default: any new key.
    bucket:
        The artifact bucket: an ``s3.IBucket`` or an
        :class:`~neo_edge.interfaces.IModelArtifactBucket` (a ``ModelArtifactBucket``,
        or ``ModelArtifactBucket.from_bucket_name(...)``). Default: a
        ``ModelArtifactBucket`` is created.
    training_job, compilation, component, fleet, deployment, telemetry:
        Parts you built, used instead of creating them. ``fleet`` is any
        :class:`~neo_edge.interfaces.IEdgeFleet` (another stack's ``EdgeFleet``, or
        ``EdgeFleet.from_thing_group_name(...)``). ``deployment`` needs ``fleet`` (the
        fleet it deploys to); the component is added to it.

    Attributes
    ----------
    bucket (an ``IModelArtifactBucket``), training_job (or ``None``), compilation,
    component, fleet, deployment, telemetry (or ``None``), endpoint (or ``None``),
    retraining (``RetrainPipeline`` or ``None``)
    """

    def __init__(
        self, scope: Construct, id: str, *,
        runtime_bundles: Optional[Mapping[str, Union[str, pathlib.Path]]] = None,
        device_wheels: Optional[Mapping[str, Union[str, pathlib.Path]]] = None,
        targets: Sequence[Union[str, TargetDevice, TargetPlatform]] = DEFAULT_TARGETS,
        component_name: Optional[str] = None,
        model_name: str = "model",
        training_data_prefix: str = "datasets/train/",
        algorithm_image: Optional[AlgorithmImage] = None,
        hyperparameters: Optional[Mapping[str, Any]] = None,
        content_type: Optional[str] = None,
        training_instance_type: Union[str, InstanceType] = InstanceType.ML_M5_XLARGE,
        model: Optional[str] = None,
        framework: Union[str, Framework] = Framework.XGBOOST,
        framework_version: Optional[str] = None,
        data_input_config: Optional[Mapping[str, Sequence[int]]] = None,
        compiler_options_per_target: Optional[
            Mapping[str, Union[CompilerOptions, Mapping[str, Any]]]] = None,
        inference_configuration: Optional[Mapping[str, Any]] = None,
        fleet_name: Optional[str] = None,
        thing_names: Sequence[str] = (),
        fleet_provisioning: bool = False,
        enable_telemetry: bool = True,
        alert_topic: Optional[sns.ITopic] = None,
        endpoint_target: Optional[str] = None,
        endpoint_instance_type: Union[None, str, InstanceType] = None,
        enable_retraining: Optional[bool] = None,
        retrain_schedule: Optional[events.Schedule] = None,
        retrain_trigger_suffixes: Sequence[str] = (),
        bucket: Union[None, s3.IBucket, IModelArtifactBucket] = None,
        training_job: Optional[TrainingJob] = None,
        compilation: Optional[NeoCompilationSet] = None,
        component: Optional[EdgeInferenceComponent] = None,
        fleet: Optional[IEdgeFleet] = None,
        deployment: Optional[EdgeDeployment] = None,
        telemetry: Optional[EdgeTelemetry] = None,
    ) -> None:
        super().__init__(scope, id)
        # --- checks --------------------------------------------------------------------
        if model is not None and training_job is not None:
            raise ValueError("model and training_job are two sources of the model; give one "
                             f"(got model {model!r} and a training_job)")
        if training_job is not None and not isinstance(training_job, TrainingJob):
            raise ValueError(f"training_job must be a TrainingJob; got {training_job!r}")
        if compilation is not None and not isinstance(compilation, NeoCompilationSet):
            raise ValueError(f"compilation must be a NeoCompilationSet; got {compilation!r}")
        if compilation is not None and tuple(targets) != DEFAULT_TARGETS:
            raise ValueError("targets configure the compilation created here; with compilation "
                             "given, its own targets are used (leave targets out)")
        if component is None and not runtime_bundles:
            raise ValueError("runtime_bundles is required (the device bundle of the edge runtime "
                             "per architecture, e.g. {'aarch64': 'build/bundle/aarch64'}) unless "
                             "component is given; got none")
        if component is not None and (runtime_bundles or device_wheels):
            raise ValueError("runtime_bundles and device_wheels configure the component created "
                             "here; with component given, its own are used (leave them out)")
        if deployment is not None and fleet is None:
            raise ValueError("deployment needs the fleet it deploys to: pass fleet= too")
        if fleet is not None and (fleet_name is not None or thing_names or fleet_provisioning):
            raise ValueError("fleet_name, thing_names and fleet_provisioning configure the fleet "
                             "created here; with fleet given, leave them out")
        if telemetry is not None and not enable_telemetry:
            raise ValueError("telemetry was given with enable_telemetry=False; give one or the "
                             "other")
        training_source = model is None
        if enable_retraining and not training_source:
            raise ValueError(f"enable_retraining needs a training job to rerun; got model "
                             f"{model!r} (leave model out to train in SageMaker)")
        retrain = training_source if enable_retraining is None else enable_retraining
        if retrain_schedule is not None and not retrain:
            raise ValueError("retrain_schedule needs the retraining pipeline (enable_retraining)")
        name = component_name or _default_component_name(id)
        if not cdk.Token.is_unresolved(name) and not _COMPONENT_NAME.match(name):
            raise ValueError(f"component_name must be letters, digits, '-', '_' and '.'; "
                             f"got {name!r}")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string; got {model_name!r}")
        if compilation is None:
            names = [as_target(t).name for t in targets]
        else:
            names = list(compilation.jobs)
        if endpoint_target is not None and endpoint_target not in names:
            raise ValueError(f"endpoint_target must be one of the compiled targets "
                             f"({', '.join(names)}); got {endpoint_target!r}")
        if endpoint_target is None and endpoint_instance_type is not None:
            raise ValueError("endpoint_instance_type needs endpoint_target (the target the "
                             "endpoint serves)")

        # --- storage ---------------------------------------------------------------------
        if isinstance(bucket, IModelArtifactBucket):
            self.bucket: IModelArtifactBucket = bucket
        else:
            self.bucket = ModelArtifactBucket(self, "Artifacts", bucket=bucket)

        # --- training ----------------------------------------------------------------------
        self.training_job: Optional[TrainingJob] = training_job
        if training_job is None and training_source:
            image = algorithm_image or AlgorithmImage.xgboost()
            if hyperparameters is None and image.is_builtin:
                hyperparameters = DEFAULT_XGBOOST_HYPERPARAMETERS
            if content_type is None and image.is_builtin:
                content_type = "text/csv"
            self.training_job = TrainingJob(
                self, "Training", bucket=self.bucket, algorithm_image=image,
                input_channels={"train": training_data_prefix}, content_type=content_type,
                hyperparameters=hyperparameters, instance_type=training_instance_type)

        # --- compilation -------------------------------------------------------------------
        if compilation is None:
            compilation = NeoCompilationSet(
                self, "Compilation", bucket=self.bucket,
                model=self.training_job if self.training_job is not None else model,
                framework=framework, framework_version=framework_version,
                data_input_config=data_input_config, targets=list(targets),
                compiler_options_per_target=compiler_options_per_target)
        self.compilation = compilation
        jobs: list = list(compilation.jobs.values())

        # --- the edge ------------------------------------------------------------------------
        self.fleet: IEdgeFleet = fleet or EdgeFleet(self, "Fleet", fleet_name=fleet_name,
                                                    thing_names=thing_names,
                                                    fleet_provisioning=fleet_provisioning)
        configuration = {"topicPrefix": self.fleet.topic_prefix, **(inference_configuration or {})}
        self.component = component or EdgeInferenceComponent(
            self, "Component", component_name=name, models=jobs,
            runtime_bundles=dict(runtime_bundles or {}),
            device_wheels=dict(device_wheels) if device_wheels is not None else None,
            configuration=configuration,
            description=f"neo-edge {model_name}: compiled for {', '.join(names)}")
        if deployment is None:
            deployment = EdgeDeployment(self, "Deployment", fleet=self.fleet,
                                        components=[self.component])
        else:
            deployment.add_component(self.component)
        self.deployment = deployment

        # --- telemetry ------------------------------------------------------------------------
        self.telemetry: Optional[EdgeTelemetry] = telemetry
        if telemetry is None and enable_telemetry:
            # The retraining pipeline deploys new versions under deployment ids known only
            # when it runs: with it, every failed deployment in the account and region
            # alerts, not only the one this stack creates.
            self.telemetry = EdgeTelemetry(
                self, "Telemetry", fleet=self.fleet, results_bucket=self.bucket.bucket,
                model_names=[model_name], deployment=None if retrain else self.deployment,
                alert_topic=alert_topic)
        if alert_topic is None and self.telemetry is not None:
            alert_topic = self.telemetry.alert_topic

        # --- the cloud endpoint -------------------------------------------------------------------
        self.endpoint: Optional[CloudInferenceEndpoint] = None
        if endpoint_target is not None:
            self.endpoint = CloudInferenceEndpoint(
                self, "Endpoint", model=compilation.jobs[endpoint_target],
                instance_type=endpoint_instance_type)

        # --- retraining ----------------------------------------------------------------------------
        self.retraining: Optional[RetrainPipeline] = None
        if retrain:
            self.retraining = RetrainPipeline(
                self, "Retraining", training_job=self.training_job, compilation=jobs,
                component=self.component, fleet=self.fleet,
                inference_configuration=configuration if component is None else None,
                schedule=retrain_schedule, trigger_suffixes=retrain_trigger_suffixes,
                alert_topic=alert_topic)

        cdk.CfnOutput(self, "ArtifactBucketName", value=self.bucket.bucket_name,
                      description="the model artifact bucket (training data goes under "
                                  f"{training_data_prefix})")
        cdk.CfnOutput(self, "ComponentName", value=self.component.component_name,
                      description="the Greengrass inference component")

    @property
    def compilation_jobs(self) -> Mapping[str, NeoCompilationJob]:
        """Target name to its compilation job."""
        return dict(self.compilation.jobs)
