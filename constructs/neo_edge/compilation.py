"""``NeoCompilationJob``: SageMaker Neo compiles a model for one target at deploy time;
``NeoCompilationSet`` (or ``NeoCompilationJob.for_targets``) compiles one model for many.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence, Union

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ._sagemaker_job import (RolePolicy, SageMakerJobProvider, check_runtime, grant_key,
                             sagemaker_execution_role)
from .choices import (CompilerOptions, Framework, TargetDevice, TargetPlatform, as_target,
                      data_input_config)
from .interfaces import IModelArtifactBucket
from .storage import as_bucket
from .training import TrainingJob

__all__ = ["NeoCompilationJob", "NeoCompilationSet", "TargetLike"]

#: A compilation target: a Neo target name, a ``TargetDevice`` or a ``TargetPlatform``.
TargetLike = Union[str, TargetDevice, TargetPlatform]
_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(.+)$")


def _bucket_of(value: Union[s3.IBucket, IModelArtifactBucket]) -> s3.IBucket:
    return as_bucket(value)


def _framework(value: Union[str, Framework]) -> Framework:
    return value if isinstance(value, Framework) else Framework.of(value)


def _compiler_options(value: Union[None, CompilerOptions, Mapping[str, Any]]
                      ) -> Optional[CompilerOptions]:
    if value is None or isinstance(value, CompilerOptions):
        return value
    return CompilerOptions.of(value)


def _model_source(scope: Construct, bucket: s3.IBucket, model: Union[TrainingJob, str]):
    """Where a compilation reads ``model`` from (a ``TrainingJob``'s ``model.tar.gz``, a key
    in ``bucket``, or a literal ``s3://bucket/key`` URI): (its URI, a function granting a
    role's policy read access to it, what identifies it for the output's fingerprint)."""
    if isinstance(model, TrainingJob):
        def read(policy: RolePolicy) -> None:
            policy.read(model.bucket, model.output_prefix)
        return (model.model_data_uri, read,
                {"training_job": cdk.Stack.of(scope).resolve(model.request)})
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a TrainingJob, a key in the bucket or an "
                         f"s3://bucket/key URI; got {model!r}")
    if model.startswith("s3://"):
        match = _S3_URI.match(model)
        if cdk.Token.is_unresolved(model) or not match:
            raise ValueError(f"model must be a literal s3://bucket/key URI (for a bucket "
                             f"in this app, pass the key and the bucket); got {model!r}")
        source = s3.Bucket.from_bucket_name(scope, "ModelBucket", match.group(1))
        key = match.group(2)

        def read_uri(policy: RolePolicy) -> None:
            policy.read(source, key)
        return model, read_uri, {"uri": model}
    if model.startswith("/") or "*" in model:
        raise ValueError(f"model key must not start with '/' or contain '*'; got {model!r}")

    def read_key(policy: RolePolicy) -> None:
        policy.read(bucket, model)
    return bucket.s3_url_for_object(model), read_key, {"key": model}


class NeoCompilationJob(Construct):
    """A SageMaker Neo compilation job started at deploy time and awaited.

    Same life cycle as ``TrainingJob``: a failed job fails the deployment with SageMaker's
    ``FailureReason``, a change of input starts a new job, removal stops a running one.

    Parameters
    ----------
    bucket:
        Where the compiled model is written (an ``s3.IBucket`` or an
        :class:`~neo_edge.interfaces.IModelArtifactBucket`, e.g.
        ``ModelArtifactBucket.from_bucket_name(...)``).
    model:
        The model: a ``TrainingJob`` (its ``model.tar.gz``), a key in ``bucket``
        (``models/model.tar.gz``), or an ``s3://bucket/key`` URI (a literal).
    framework:
        The model's framework (``Framework.ONNX`` or its name).
    target:
        ``TargetDevice`` (or its name: ``"rasp4b"``) or ``TargetPlatform``.
    framework_version:
        Only for frameworks that take one (PyTorch, TFLite, TensorFlow, MXNet).
        Default: Neo's default for the framework.
    data_input_config:
        Input name to shape (``{"input": [1, 3, 224, 224]}``); NCHW for ONNX and PyTorch.
        Required for every framework but XGBoost, which takes none.
    compiler_options:
        ``CompilerOptions`` (or a mapping). Required for an NVIDIA ``TargetPlatform``:
        ``CompilerOptions.nvidia(gpu_code=..., trt_ver=..., cuda_ver=...)``.
        Default: none.
    output_prefix:
        Key prefix of the compiled model in ``bucket``. Default: ``compiled/<id>/``.
    max_runtime:
        The job's stopping condition, at most 50 minutes. Default: 900 seconds.
    encryption_key:
        Encrypts the compiled model: any ``kms.IKey``, including an imported one
        (``kms.Key.from_key_arn(...)``). Default: the bucket's key (none: S3-managed).
    role:
        The role SageMaker assumes. Default: a role is created that reads the model,
        writes the output prefix and uses the key only.
    run_id:
        Change it to compile the same inputs again. Default: none.
    """

    def __init__(
        self, scope: Construct, id: str, *,
        bucket: Union[s3.IBucket, IModelArtifactBucket],
        model: Union[TrainingJob, str],
        framework: Union[str, Framework],
        target: TargetLike,
        framework_version: Optional[str] = None,
        data_input_config: Optional[Mapping[str, Sequence[int]]] = None,
        compiler_options: Union[None, CompilerOptions, Mapping[str, Any]] = None,
        output_prefix: Optional[str] = None,
        max_runtime: cdk.Duration = cdk.Duration.seconds(900),
        encryption_key: Optional[kms.IKey] = None,
        role: Optional[iam.IRole] = None,
        run_id: Optional[str] = None,
    ) -> None:
        super().__init__(scope, id)
        # Checks first.
        self.bucket = _bucket_of(bucket)
        self.framework = _framework(framework)
        self.framework.check_version(framework_version)
        shapes = _data_input_config(self.framework, data_input_config)
        options = _compiler_options(compiler_options)
        #: The ``TargetDevice`` or ``TargetPlatform``.
        self.target: Union[TargetDevice, TargetPlatform] = as_target(target)
        if isinstance(self.target, TargetPlatform):
            #: The row of the target table the model is compiled for.
            self.target_spec = self.target.resolve(options)
        else:
            self.target_spec = self.target.target
        runtime_s = check_runtime("max_runtime", max_runtime)
        output_prefix = output_prefix or f"compiled/{id}/"
        if not cdk.Token.is_unresolved(output_prefix) and (
                output_prefix.startswith("/") or "*" in output_prefix or "://" in output_prefix):
            raise ValueError(f"output_prefix must be a key prefix in the bucket, without a "
                             f"leading '/', '*' or 's3://' (e.g. 'compiled/'); got "
                             f"{output_prefix!r}")
        model_uri, read, _ = _model_source(self, self.bucket, model)
        key = encryption_key or self.bucket.encryption_key

        if role is None:
            role = sagemaker_execution_role(self, "Role", log_group_family="CompilationJobs",
                                            description=f"SageMaker Neo compilation job "
                                                        f"{self.node.path}")
        self.role: iam.IRole = role
        policy = RolePolicy(self, role)
        read(policy)
        policy.write(self.bucket, output_prefix)
        grant_key(key, role)
        policy.acknowledge()

        input_config: dict = {"S3Uri": model_uri, "Framework": self.framework.name}
        if shapes is not None:
            input_config["DataInputConfig"] = shapes
        if framework_version is not None:
            input_config["FrameworkVersion"] = framework_version
        output_config: dict = {"S3OutputLocation": self.bucket.s3_url_for_object(
            output_prefix.rstrip("/")), **self.target.output_config()}
        if options is not None:
            output_config["CompilerOptions"] = options.to_json()
        if key is not None:
            output_config["KmsKeyId"] = key.key_arn
        request = {"RoleArn": role.role_arn, "InputConfig": input_config,
                   "OutputConfig": output_config,
                   "StoppingCondition": {"MaxRuntimeInSeconds": runtime_s}}

        provider = SageMakerJobProvider.of(self)
        self.resource = provider.job_resource(
            self, "Resource", kind="compilation",
            resource_type="Custom::SageMakerCompilationJob", request=request, role=role,
            run_id=run_id)

        #: The job's name.
        self.job_name: str = self.resource.get_att_string("JobName")
        #: The job's ARN.
        self.job_arn: str = self.resource.get_att_string("JobArn")
        #: The compiled model's S3 URI, as SageMaker reports it.
        self.compiled_model_uri: str = self.resource.get_att_string("ModelArtifacts")
        #: The Neo inference container SageMaker reports for this framework and target.
        self.inference_image: str = self.resource.get_att_string("InferenceImage")
        #: The prefix the compiled model is written under.
        self.output_prefix = output_prefix
        #: The ``CreateCompilationJob`` request without ``CompilationJobName`` (tokens
        #: unresolved): what a ``RetrainPipeline`` sends again at run time.
        self.request: dict = request

    @property
    def artifact_format(self) -> str:
        """``dlr``: SageMaker Neo writes DLR's format (``compiled.so``,
        ``compiled_model.json``, ``compiled.params``), for SageMaker endpoints and DLR; an
        ``EdgeInferenceComponent`` refuses it (compile with ``EdgeCompilationJob``)."""
        return "dlr"

    @classmethod
    def for_targets(cls, scope: Construct, id: str, *, targets: Sequence[TargetLike],
                    **props: Any) -> dict:
        """Compile one model for each of ``targets``: a ``NeoCompilationSet``'s jobs,
        by target name (``{"rasp4b": job, "jetson_xavier": job, "ml_c5": job}``)."""
        return NeoCompilationSet(scope, id, targets=targets, **props).jobs


def _data_input_config(framework: Framework, shapes):
    return data_input_config(framework, shapes)


class NeoCompilationSet(Construct):
    """One model compiled for several targets ("for rasp4b, jetson_xavier and ml_c5").

    Each target gets a ``NeoCompilationJob`` with the construct id of its name, output
    under ``<output_prefix><target name>/``, sharing one SageMaker role.

    Parameters
    ----------
    targets:
        Target names, ``TargetDevice`` or ``TargetPlatform`` values; no duplicates.
    compiler_options_per_target:
        Extra ``CompilerOptions`` for some targets, by target name (e.g. NVIDIA options
        for a platform). Default: ``compiler_options`` for all.
    output_prefix:
        Default: ``compiled/<id>/``.
    **props:
        Everything else ``NeoCompilationJob`` takes (``bucket``, ``model``,
        ``framework``, ``data_input_config``, ...).
    """

    def __init__(self, scope: Construct, id: str, *, targets: Sequence[TargetLike],
                 compiler_options_per_target: Optional[
                     Mapping[str, Union[CompilerOptions, Mapping[str, Any]]]] = None,
                 output_prefix: Optional[str] = None, role: Optional[iam.IRole] = None,
                 **props: Any) -> None:
        super().__init__(scope, id)
        if isinstance(targets, (str, TargetDevice, TargetPlatform)) or not targets:
            raise ValueError(f"targets must be a non-empty list of target names, TargetDevice "
                             f"or TargetPlatform values; got {targets!r}")
        resolved = [as_target(t) for t in targets]
        names = [t.name for t in resolved]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"targets must not repeat a target; got {', '.join(duplicates)} "
                             f"more than once")
        per_target = dict(compiler_options_per_target or {})
        unknown = sorted(set(per_target) - set(names))
        if unknown:
            raise ValueError(f"compiler_options_per_target names targets not in targets "
                             f"({', '.join(names)}); got {', '.join(unknown)}")
        prefix = output_prefix or f"compiled/{id}/"
        if role is None:
            role = sagemaker_execution_role(self, "Role", log_group_family="CompilationJobs",
                                            description=f"SageMaker Neo compilation jobs "
                                                        f"{self.node.path}")
        self.role: iam.IRole = role
        #: Target name to its job.
        self.jobs: dict = {}
        for target in resolved:
            options = per_target.get(target.name, props.get("compiler_options"))
            job_props = {k: v for k, v in props.items() if k != "compiler_options"}
            self.jobs[target.name] = NeoCompilationJob(
                self, target.name, target=target, compiler_options=options, role=role,
                output_prefix=f"{prefix}{target.name}/", **job_props)

    def __getitem__(self, name: str) -> NeoCompilationJob:
        return self.jobs[name]
