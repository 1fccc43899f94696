"""``NeoEdgePipeline``: the whole path in one construct.

Artifact bucket -> training job -> compilation for every target (device targets by
neo-edge's own compiler in AWS CodeBuild, ``EdgeCompilationSet``; SageMaker endpoint
targets, ``ml_*``, by SageMaker Neo, ``NeoCompilationSet``) -> the Greengrass inference
component (the device targets' models) -> the fleet and its deployment -> telemetry,
plus a retraining pipeline and, optionally, a SageMaker endpoint. A dozen lines deploy
it::

    from neo_edge import NeoEdgePipeline

    NeoEdgePipeline(stack, "Digits",
                    runtime_bundles={"aarch64": "build/bundle/aarch64",
                                     "x86_64": "build/bundle/x86_64"},
                    targets=["rasp4b", "ml_c5"],
                    hyperparameters={"objective": "multi:softprob", "num_class": 10,
                                     "num_round": 50},
                    model_name="digits")

Each part can be replaced by one you built (``bucket=``, ``training_job=``,
``compilation=``, ``component=``, ``fleet=``, ``deployment=``, ``telemetry=``); the
pipeline then wires yours instead of creating its own, and the props that only
configure the replaced part are refused rather than silently ignored.

Compiled models are signed by default: an ``ArtifactSigningKey`` (an asymmetric KMS key)
is created, the builds sign every artifact's manifest with it (deploy-time and retraining
runs alike), and the component gives its devices the public key (``signingPublicKey``), so
that a device loads only models this pipeline built. Signing is on by default because the
manifest's hashes alone vouch for nothing against someone who can write the artifact
bucket: they rewrite the hashes with the model. ``signing_key=`` shares a key between
pipelines; ``sign_artifacts=False`` builds unsigned models (no key, devices check models
against their manifests only).
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
from .edge_compilation import EdgeCompilationJob, EdgeCompilationSet
from .canary import CanaryRollout
from .component import EdgeInferenceComponent
from .deployment import EdgeDeployment
from .endpoint import CloudInferenceEndpoint
from .fleet import EdgeFleet
from .interfaces import IEdgeFleet, IModelArtifactBucket
from .retrain import RetrainPipeline
from .signing import ArtifactSigningKey
from .storage import ModelArtifactBucket
from .telemetry import EdgeTelemetry
from .training import TrainingJob

__all__ = ["DEFAULT_TARGETS", "DEFAULT_XGBOOST_HYPERPARAMETERS", "NeoEdgePipeline"]

#: One ARM board and one Intel cloud instance family. No Jetson: every Jetson Neo names
#: (TX1, TX2, Nano, Xavier) predates the CUDA 13 runtime of the device bundle (see
#: ``neo_edge_runtime.targets.CUDA_MIN_COMPUTE_CAPABILITY``).
DEFAULT_TARGETS = ("rasp4b", "ml_c5")
#: What the built-in XGBoost algorithm needs at least.
DEFAULT_XGBOOST_HYPERPARAMETERS = {"num_round": "100"}

_COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9-_.]+$")


def _default_component_name(id: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "", id) or "Model"
    return f"com.neoedge.{cleaned}"


def _signing(sign_artifacts: Optional[bool], signing_key: Optional[ArtifactSigningKey],
             compilation: Optional[EdgeCompilationSet],
             component: Optional[EdgeInferenceComponent],
             inference_configuration: Optional[Mapping[str, Any]]) -> tuple:
    """``(key, create)``: the signing key the pipeline uses (``None`` for none, or to
    create one when ``create``), from the props and the parts given; contradictions
    refused.

    The parts given decide when they can: builds sign with the compilation's key, devices
    verify with the component's, so both (and ``signing_key``) must be the same key. With
    a given part that is unsigned and nothing asked for, the pipeline does not sign: the
    user built that part so; asked for (``sign_artifacts=True`` or ``signing_key``), an
    unsigned part is refused rather than leave devices unchecked.
    """
    if sign_artifacts is not None and not isinstance(sign_artifacts, bool):
        raise ValueError(f"sign_artifacts must be True, False or None; got {sign_artifacts!r}")
    if signing_key is not None and not isinstance(
            getattr(signing_key, "public_key", None), str):
        raise ValueError(f"signing_key must be an ArtifactSigningKey; got {signing_key!r}")
    if "signingPublicKey" in (inference_configuration or {}):
        raise ValueError("inference_configuration must not set signingPublicKey: the devices "
                         "get the public key of the pipeline's signing key (give another key "
                         "as signing_key=, or sign_artifacts=False for unsigned models)")
    # What signs the builds, what the devices verify with.
    parts = [(f"the {name} given", getattr(part, "signing_key", None))
             for name, part in (("compilation", compilation), ("component", component))
             if part is not None]
    if sign_artifacts is False:
        if signing_key is not None:
            raise ValueError("signing_key was given with sign_artifacts=False; give one or "
                             "the other")
        signed = [label for label, k in parts if k is not None]
        if signed:
            raise ValueError(f"sign_artifacts=False, but {' and '.join(signed)} signs with a "
                             f"signing_key: leave sign_artifacts out, or build it unsigned")
        return None, False
    keys = [("signing_key", signing_key)] if signing_key is not None else []
    keys += [(label, k) for label, k in parts if k is not None]
    if any(k is not keys[0][1] for _, k in keys):
        raise ValueError(f"{' and '.join(label for label, _ in keys)} have different signing "
                         f"keys; the builds must sign with the key the devices verify with: "
                         f"give them one ArtifactSigningKey")
    unsigned = [label for label, k in parts if k is None]
    if unsigned and (sign_artifacts or signing_key is not None):
        asked = "signing_key was given" if signing_key is not None else "sign_artifacts=True"
        raise ValueError(f"{asked}, but {' and '.join(unsigned)} has no signing_key (its "
                         f"builds would not sign, or its devices not verify): build it with "
                         f"signing_key=, or leave sign_artifacts and signing_key out")
    if keys:
        return keys[0][1], False
    return None, not unsigned


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
        Targets to compile for (names, ``TargetDevice`` or ``TargetPlatform``). Device
        targets compile with neo-edge's compiler in AWS CodeBuild (an
        ``EdgeCompilationSet``) and ship in the component; SageMaker endpoint targets
        (``ml_*``) compile with SageMaker Neo (a ``NeoCompilationSet``), for
        ``endpoint_target``, and do not ship in the component (Neo's DLR format does not
        run on the edge runtime; for x86_64 devices name an x86_64 device target).
        At least one device target.
        Default: ``rasp4b`` and ``ml_c5``.
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
    framework, data_input_config:
        How the compilers read the model (see ``EdgeCompilationJob``). Default:
        XGBoost, which takes no shapes.
    framework_version, compiler_options_per_target:
        For the SageMaker Neo (endpoint) targets only (see ``NeoCompilationJob``).
        Default: none.
    inference_configuration:
        The component's configuration overrides (``inputTopic``, ``threadCount``,
        ...). Default: the recipe builder's, with the fleet's topic prefix.
    fleet_name, thing_names, fleet_provisioning:
        Passed to the ``EdgeFleet`` created. Default: a generated name, no things, no
        fleet provisioning.
    sign_artifacts:
        Sign every compiled model (``manifest.json.sig``, by the builds, with a KMS key)
        and make the devices refuse models that are unsigned or do not verify. ``False``:
        unsigned models, no key, devices check models against their manifests only.
        Default: on, with ``signing_key`` or a key created here; with ``compilation`` or
        ``component`` given and unsigned, off (the pipeline signs as the parts given do).
    signing_key:
        The ``ArtifactSigningKey`` to sign with (one key for several pipelines or stacks;
        its public key is what devices trust). A ``compilation`` or ``component`` given
        must have this same key. Default: the key of the ``compilation`` or ``component``
        given, else one is created (``Signing``).
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
    canary_fleet:
        A canary thing group of its own (an ``EdgeFleet``, none of its devices in the
        fleet's group): a ``CanaryRollout`` is created for the fleet, reporting to
        ``alert_topic`` and graphing on the telemetry's dashboard, and retraining
        deploys each new version through it (the canary devices first, the fleet once
        they report it healthy). Default: no canary; retraining deploys to the fleet at
        once.
    bucket:
        The artifact bucket: an ``s3.IBucket`` or an
        :class:`~neo_edge.interfaces.IModelArtifactBucket` (a ``ModelArtifactBucket``,
        or ``ModelArtifactBucket.from_bucket_name(...)``). Default: a
        ``ModelArtifactBucket`` is created.
    training_job, compilation, endpoint_compilation, component, fleet, deployment, telemetry:
        Parts you built, used instead of creating them. ``compilation`` is an
        ``EdgeCompilationSet`` (the component's models); ``endpoint_compilation`` a
        ``NeoCompilationSet`` of endpoint targets (with ``compilation`` only). ``fleet`` is any
        :class:`~neo_edge.interfaces.IEdgeFleet` (another stack's ``EdgeFleet``, or
        ``EdgeFleet.from_thing_group_name(...)``). ``deployment`` needs ``fleet`` (the
        fleet it deploys to); the component is added to it.

    Attributes
    ----------
    bucket (an ``IModelArtifactBucket``), training_job (or ``None``), compilation
    (``EdgeCompilationSet``), endpoint_compilation (``NeoCompilationSet`` or ``None``),
    component, fleet, deployment, telemetry (or ``None``), endpoint (or ``None``),
    retraining (``RetrainPipeline`` or ``None``), canary (``CanaryRollout`` or ``None``),
    signing_key (``ArtifactSigningKey`` or ``None``)
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
        sign_artifacts: Optional[bool] = None,
        signing_key: Optional[ArtifactSigningKey] = None,
        enable_telemetry: bool = True,
        alert_topic: Optional[sns.ITopic] = None,
        endpoint_target: Optional[str] = None,
        endpoint_instance_type: Union[None, str, InstanceType] = None,
        enable_retraining: Optional[bool] = None,
        retrain_schedule: Optional[events.Schedule] = None,
        retrain_trigger_suffixes: Sequence[str] = (),
        canary_fleet: Optional[IEdgeFleet] = None,
        bucket: Union[None, s3.IBucket, IModelArtifactBucket] = None,
        training_job: Optional[TrainingJob] = None,
        compilation: Optional[EdgeCompilationSet] = None,
        endpoint_compilation: Optional[NeoCompilationSet] = None,
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
        if isinstance(compilation, NeoCompilationSet):
            raise ValueError(
                "compilation must be an EdgeCompilationSet (the component's models, compiled by "
                "neo-edge's compiler); got a NeoCompilationSet: SageMaker Neo writes DLR's format "
                "(compiled.so, compiled_model.json, compiled.params; no manifest.json), which the "
                "edge runtime does not load. Pass Neo's endpoint targets as endpoint_compilation")
        if compilation is not None and not isinstance(compilation, EdgeCompilationSet):
            raise ValueError(f"compilation must be an EdgeCompilationSet; got {compilation!r}")
        if endpoint_compilation is not None and compilation is None:
            raise ValueError("endpoint_compilation needs compilation (the device targets) too; "
                             "without it, give targets and both are created")
        if endpoint_compilation is not None and not isinstance(endpoint_compilation,
                                                               NeoCompilationSet):
            raise ValueError(f"endpoint_compilation must be a NeoCompilationSet; got "
                             f"{endpoint_compilation!r}")
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
            resolved = [as_target(t) for t in targets]
            device_targets = [t for t in resolved if t.instance_family is None]
            endpoint_targets = [t for t in resolved if t.instance_family is not None]
            names = [t.name for t in resolved]
            device_names = [t.name for t in device_targets]
            endpoint_names = [t.name for t in endpoint_targets]
            if not device_targets:
                raise ValueError(f"targets must include at least one device target (the "
                                 f"component's models; ml_* targets are SageMaker endpoints); "
                                 f"got {', '.join(names)}")
            unknown = sorted(set(compiler_options_per_target or {}) - set(endpoint_names))
            if unknown:
                raise ValueError(f"compiler_options_per_target applies to the SageMaker Neo "
                                 f"(endpoint) targets ({', '.join(endpoint_names) or 'none'}); "
                                 f"got {', '.join(unknown)}")
        else:
            device_names = list(compilation.jobs)
            endpoint_names = list(endpoint_compilation.jobs) if endpoint_compilation else []
            names = device_names + endpoint_names
        if endpoint_target is not None and endpoint_target not in endpoint_names:
            raise ValueError(f"endpoint_target must be one of the endpoint targets compiled by "
                             f"SageMaker Neo ({', '.join(endpoint_names) or 'none'}); got "
                             f"{endpoint_target!r}")
        if endpoint_target is None and endpoint_instance_type is not None:
            raise ValueError("endpoint_instance_type needs endpoint_target (the target the "
                             "endpoint serves)")
        key, create_key = _signing(sign_artifacts, signing_key, compilation, component,
                                   inference_configuration)

        # --- storage ---------------------------------------------------------------------
        if isinstance(bucket, IModelArtifactBucket):
            self.bucket: IModelArtifactBucket = bucket
        else:
            self.bucket = ModelArtifactBucket(self, "Artifacts", bucket=bucket)

        # --- signing ----------------------------------------------------------------------
        if create_key:
            key = ArtifactSigningKey(self, "Signing")
        #: The key the builds sign with and the devices verify with, or ``None``.
        self.signing_key: Optional[ArtifactSigningKey] = key

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
        source = self.training_job if self.training_job is not None else model
        if compilation is None:
            compilation = EdgeCompilationSet(
                self, "EdgeCompilation", bucket=self.bucket, model=source, framework=framework,
                data_input_config=data_input_config, targets=device_targets, signing_key=key)
            if endpoint_targets:
                endpoint_compilation = NeoCompilationSet(
                    self, "Compilation", bucket=self.bucket, model=source, framework=framework,
                    framework_version=framework_version, data_input_config=data_input_config,
                    targets=endpoint_targets,
                    compiler_options_per_target=compiler_options_per_target)
        #: The device targets' compilation (neo-edge's compiler): the component's models.
        self.compilation = compilation
        #: The endpoint targets' compilation (SageMaker Neo), or ``None``.
        self.endpoint_compilation: Optional[NeoCompilationSet] = endpoint_compilation
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
            configuration=configuration, signing_key=key,
            description=f"neo-edge {model_name}: compiled for {', '.join(device_names)}")
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
                self, "Endpoint", model=endpoint_compilation.jobs[endpoint_target],
                instance_type=endpoint_instance_type)

        # --- retraining ----------------------------------------------------------------------------
        self.canary: Optional[CanaryRollout] = None
        if canary_fleet is not None:
            self.canary = CanaryRollout(self, "Canary", fleet=self.fleet, canary_fleet=canary_fleet,
                                        alert_topic=alert_topic,
                                        dashboard=getattr(self.telemetry, "dashboard", None))
        self.retraining: Optional[RetrainPipeline] = None
        if retrain:
            self.retraining = RetrainPipeline(
                self, "Retraining", training_job=self.training_job, compilation=jobs,
                component=self.component, fleet=self.fleet,
                inference_configuration=configuration if component is None else None,
                schedule=retrain_schedule, trigger_suffixes=retrain_trigger_suffixes,
                alert_topic=alert_topic, canary=self.canary)

        cdk.CfnOutput(self, "ArtifactBucketName", value=self.bucket.bucket_name,
                      description="the model artifact bucket (training data goes under "
                                  f"{training_data_prefix})")
        cdk.CfnOutput(self, "ComponentName", value=self.component.component_name,
                      description="the Greengrass inference component")
        if key is not None:
            cdk.CfnOutput(self, "SigningPublicKey", value=key.public_key,
                          description="the public key compiled models are signed for (base64 "
                                      "DER; the devices' signingPublicKey)")

    @property
    def compilation_jobs(self) -> Mapping[str, Union[EdgeCompilationJob, NeoCompilationJob]]:
        """Target name to its compilation job (device targets' and endpoint targets')."""
        jobs = dict(self.compilation.jobs)
        if self.endpoint_compilation is not None:
            jobs.update(self.endpoint_compilation.jobs)
        return jobs
