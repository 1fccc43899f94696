"""``EdgeCompilationJob``: neo-edge's own compiler compiles a model for one target in AWS
at deploy time; ``EdgeCompilationSet`` (or ``EdgeCompilationJob.for_targets``) compiles one
model for many.

The compiler runs in an AWS CodeBuild project on a standard Linux image (no Docker
anywhere: not on the machine that synthesizes, not in the build). The project's source is
an S3 asset holding the project's own wheel, made at synth time from the installed
``neo-edge`` distribution, so that the compiler in AWS is the one the app was synthesized
with; the build installs it with its ``[compiler]`` extra and runs
``python -m neo_edge_runtime.compile.cloud``, which writes ``<prefix>model.tar.gz`` (a
neo-edge artifact, ``manifest.json`` at its root: what ``EdgeInferenceComponent``'s install
step unpacks and ``EdgeModel.load`` loads) and ``<prefix>compile-report.json``.

How the wheel is made (and why not ``pip wheel`` / ``python -m build``): a CDK app of a user
has ``neo-edge`` installed from its wheel and no checkout to build from, and pip cannot
turn an installed distribution back into a wheel. :func:`installed_wheel` therefore packs
the two installed packages (``neo_edge``, ``neo_edge_runtime``: their ``.py`` files, found
where Python imports them from, as the Lambda assets are) with the distribution's own
``METADATA`` into a ``py3-none-any`` wheel, byte for byte the same for the same sources
(fixed timestamps and order), so the asset hash changes only when the code does. The same
code works from a checkout (an editable install) and from an installed wheel.

The build installs the wheel ``--no-deps`` and, separately, the requirements of its
``[compiler]`` extra as the wheel's metadata lists them (exact pins), not the wheel's base
requirements: those are the CDK library's (aws-cdk-lib, ...), floors rather than pins, and
the compiler does not use them.

Deploy-time runs go through the stack's custom-resource provider for jobs (the
``sagemaker_job`` handler, whose ``build`` kind starts a build and waits for it); a
``RetrainPipeline`` starts the same project from Step Functions with the run's model and
output location.

Signing (``signing_key=``, an ``ArtifactSigningKey``): the build signs each artifact's
manifest with the KMS key (``manifest.json.sig`` in ``model.tar.gz``) and the project's role
gets ``kms:Sign`` on that key and nothing else. The key's ARN and public key are the
project's environment variables (:data:`SIGNING_KMS_KEY_VARIABLE`,
:data:`SIGNING_PUBLIC_KEY_VARIABLE`), which the command passes as ``--signing-kms-key`` and
``--signing-public-key``: a build started with ``environmentVariablesOverride`` (the
deploy-time run, a retraining run) overrides only the variables it names, "for this build
only, the latest ones already defined in the build project" (botocore's CodeBuild model,
``StartBuild``), so every run of the project signs.
"""

from __future__ import annotations

import base64
import email.parser
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import pathlib
import re
import shlex
import tempfile
import zipfile
from typing import Any, Mapping, Optional, Sequence, Union

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from ._sagemaker_job import (RolePolicy, SageMakerJobProvider, acknowledge,
                             acknowledge_wildcards, check_runtime)
from .choices import Framework, TargetDevice, TargetPlatform, as_target
from .compilation import _model_source
from .interfaces import IModelArtifactBucket
from .signing import ArtifactSigningKey
from .storage import as_bucket
from .training import TrainingJob

__all__ = ["BOTO3_REQUIREMENT", "BUILD_EXTRAS", "BUILD_IMAGE", "COMPILER_FRAMEWORKS", "CROSS_COMPILER_PACKAGES",
           "EdgeCompilationJob", "EdgeCompilationSet", "PYTHON_VERSION",
           "SIGNING_KMS_KEY_VARIABLE", "SIGNING_PUBLIC_KEY_VARIABLE", "TargetLike",
           "installed_wheel"]

#: A compilation target: a target name, a ``TargetDevice`` or a ``TargetPlatform``.
TargetLike = Union[str, TargetDevice, TargetPlatform]

#: The CodeBuild image: Ubuntu 22.04, whose runtimes include Python 3.11
#: (https://docs.aws.amazon.com/codebuild/latest/userguide/available-runtimes.html).
BUILD_IMAGE = codebuild.LinuxBuildImage.STANDARD_7_0
#: The interpreter the build installs the compiler into: the one the project's pinned
#: set-up (requirements.lock) is tested on; the ``[compiler]`` extra needs 3.11 or newer.
PYTHON_VERSION = "3.11"
#: Debian packages of the C cross compilers that link device libraries, by architecture
#: (the same the repository's Makefile installs for local cross-compilation).
CROSS_COMPILER_PACKAGES: Mapping[str, str] = {"aarch64": "gcc-aarch64-linux-gnu",
                                              "armv7l": "gcc-arm-linux-gnueabihf"}
#: What ``python -m neo_edge_runtime.compile.cloud --framework`` takes (None: ``auto``).
COMPILER_FRAMEWORKS = ("XGBOOST", "ONNX", "PYTORCH", "SKLEARN")
#: The extras of the wheel the build installs (``--framework sklearn`` compiles the
#: archive's ONNX export, so the compiler's own extra is all it needs).
BUILD_EXTRAS = ("compiler",)
#: The S3 client the compile module uses, added to the build's requirements when the
#: ``[compiler]`` extra does not list it (the version requirements.lock pins).
BOTO3_REQUIREMENT = "boto3==1.44.8"
#: The project's environment variables a signed build signs with: the key's ARN and its
#: public key (base64 DER), passed as ``--signing-kms-key`` / ``--signing-public-key``.
SIGNING_KMS_KEY_VARIABLE = "SIGNING_KMS_KEY"
SIGNING_PUBLIC_KEY_VARIABLE = "SIGNING_PUBLIC_KEY"

_DISTRIBUTION = "neo-edge"
_PACKAGES = ("neo_edge", "neo_edge_runtime")
_REQUIREMENTS_FILE = "requirements-compiler.txt"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_PROVIDER_BUILD_KIND = "build"


# ---------------------------------------------------------------------------------------
# The wheel


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _package_files(package: str) -> list:
    """``(path in the wheel, bytes)`` of every ``.py`` file of an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package!r} is not installed in this environment; install "
                         f"neo-edge (pip install neo-edge) to synthesize compilation jobs")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    files = []
    # followlinks: in a checkout neo_edge/_functions is a link to the Lambda folders.
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".pytest_cache"))
        for name in sorted(names):
            if name.endswith(".py"):
                path = pathlib.Path(folder) / name
                arcname = f"{package}/{path.relative_to(root).as_posix()}"
                files.append((arcname, path.read_bytes()))
    return files


def _compiler_requirements(metadata: str) -> list:
    """The requirements of the :data:`BUILD_EXTRAS` (markers dropped), as the metadata
    lists them, in its order."""
    message = email.parser.Parser().parsestr(metadata)
    out = []
    for requirement in message.get_all("Requires-Dist") or []:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([a-z0-9_-]+)["']""", marker)
        if extra and extra.group(1) in BUILD_EXTRAS and spec.strip() not in out:
            out.append(spec.strip())
    if not out:
        raise ValueError(f"the installed {_DISTRIBUTION} distribution lists no [compiler] "
                         f"extra in its metadata; reinstall it (pip install neo-edge)")
    if not any(re.match(r"^boto3\b", r) for r in out):
        out.append(BOTO3_REQUIREMENT)
    return out


@functools.lru_cache(maxsize=1)
def installed_wheel() -> tuple:
    """The installed ``neo-edge`` as a wheel: ``(file name, wheel bytes, compiler requirements)``.

    Deterministic: the same installed files give the same bytes.
    """
    # An installed wheel's (or editable install's) .dist-info first: a stray .egg-info on
    # sys.path (a checkout's setuptools leftovers) has no METADATA file.
    found = sorted(importlib.metadata.distributions(name=_DISTRIBUTION),
                   key=lambda d: d.read_text("METADATA") is None)
    if not found:
        raise ValueError(f"the {_DISTRIBUTION} distribution is not installed in this "
                         f"environment (pip install neo-edge); its wheel is what the "
                         f"compilation builds install")
    dist = found[0]
    metadata = dist.read_text("METADATA")
    if metadata is None:  # only an .egg-info: its PKG-INFO, with requires.txt's requirements
        message = dist.metadata
        del message["Requires-Dist"]
        for requirement in dist.requires or []:
            message["Requires-Dist"] = requirement
        metadata = message.as_string()
    version = dist.version
    requirements = _compiler_requirements(metadata)
    info = f"neo_edge-{version}.dist-info"
    files = [f for package in _PACKAGES for f in _package_files(package)]
    files.append((f"{info}/METADATA", metadata.encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: neo-edge\n"
                                   b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            entry = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return f"neo_edge-{version}-py3-none-any.whl", buffer.getvalue(), tuple(requirements)


def _wheel_folder() -> pathlib.Path:
    """A folder with the wheel and the compiler requirements, named by their content."""
    name, data, requirements = installed_wheel()
    text = "".join(f"{r}\n" for r in requirements)
    digest = hashlib.sha256(data + text.encode()).hexdigest()[:16]
    folder = pathlib.Path(tempfile.gettempdir()) / f"neo-edge-compiler-wheel-{digest}"
    if not (folder / name).is_file():
        staging = pathlib.Path(tempfile.mkdtemp(prefix="neo-edge-wheel-"))
        (staging / name).write_bytes(data)
        (staging / _REQUIREMENTS_FILE).write_text(text)
        try:
            staging.rename(folder)
        except OSError:  # another synth made it first: the same content
            pass
    return folder


class _CompilerWheel(Construct):
    """The stack's one asset with the wheel; shared by every compilation project."""

    _ID = "NeoEdgeCompilerWheel"

    @classmethod
    def of(cls, scope: Construct) -> "_CompilerWheel":
        stack = cdk.Stack.of(scope)
        existing = stack.node.try_find_child(cls._ID)
        if existing is not None:
            return existing  # type: ignore[return-value]
        return cls(stack, cls._ID)

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        name, data, _ = installed_wheel()
        #: The wheel's file name (``neo_edge-0.1.0-py3-none-any.whl``).
        self.wheel_name = name
        #: sha256 of the wheel: part of every job's fingerprint.
        self.sha256 = hashlib.sha256(data).hexdigest()
        #: A ``.zip`` of the wheel and ``requirements-compiler.txt``: the builds' source.
        self.asset = s3_assets.Asset(self, "Asset", path=str(_wheel_folder()))


# ---------------------------------------------------------------------------------------
# The job


def _framework(value: Union[None, str, Framework]) -> Optional[Framework]:
    if value is None:
        return None
    framework = value if isinstance(value, Framework) else Framework.of(value)
    if framework.name not in COMPILER_FRAMEWORKS:
        raise ValueError(f"framework must be one of {', '.join(COMPILER_FRAMEWORKS)} for the "
                         f"neo-edge compiler (or None to detect it from the archive); got "
                         f"{framework.name!r}")
    return framework


def _shapes(shapes: Optional[Mapping[str, Sequence[int]]]) -> list:
    """``["name=1,3,224,224", ...]`` for ``--input-shape``."""
    if shapes is None:
        return []
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValueError(f"data_input_config must be a mapping of input name to shape, e.g. "
                         f"{{'input': [1, 3, 224, 224]}}; got {shapes!r}")
    out = []
    for name, shape in shapes.items():
        ok = (isinstance(name, str) and name and "=" not in name
              and isinstance(shape, (list, tuple)) and shape
              and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape))
        if not ok:
            raise ValueError(f"data_input_config must map input names (without '=') to shapes "
                             f"(lists of positive integers); got {name!r}: {shape!r}")
        out.append(f"{name}={','.join(str(d) for d in shape)}")
    return out


def _check_prefix(name: str, value: str) -> None:
    if cdk.Token.is_unresolved(value):
        return
    if (not isinstance(value, str) or not value or value.startswith("/") or "*" in value
            or "://" in value or not value.endswith("/")):
        raise ValueError(f"{name} must be a key prefix in the bucket ending in '/', without a "
                         f"leading '/', '*' or 's3://' (e.g. 'compiled/'); got {value!r}")


def _check_signing_key(signing_key: Any) -> None:
    """An ``ArtifactSigningKey``, or anything with its ``key_arn``, ``public_key`` and
    ``grant_sign``."""
    if signing_key is None:
        return
    if not (isinstance(getattr(signing_key, "key_arn", None), str)
            and isinstance(getattr(signing_key, "public_key", None), str)
            and callable(getattr(signing_key, "grant_sign", None))):
        raise ValueError(f"signing_key must be an ArtifactSigningKey (key_arn, public_key, "
                         f"grant_sign); got {signing_key!r}")


class EdgeCompilationJob(Construct):
    """neo-edge's compiler run in AWS CodeBuild for one target, at deploy time, and awaited.

    The compiled model is a neo-edge artifact (``manifest.json``, the compiled library,
    weights) at ``s3://<bucket>/<output_prefix><inputs hash>/model.tar.gz``: a new key
    whenever an input changes (the model's source, the target, the compiler's wheel, the
    run id), so a component version published earlier keeps its artifact. Feed it to an
    ``EdgeInferenceComponent`` (``models=[job]``) or a ``RetrainPipeline``. For SageMaker
    endpoints use ``NeoCompilationJob``: SageMaker Neo's output is in DLR's format.

    A failed build fails the deployment with the failed phase's messages and the link to
    the build's log; removal stops a running build.

    Parameters
    ----------
    bucket:
        Where the compiled model is written (an ``s3.IBucket`` or an
        :class:`~neo_edge.interfaces.IModelArtifactBucket`).
    model:
        The model: a ``TrainingJob`` (its ``model.tar.gz``), a key in ``bucket``
        (``models/model.tar.gz``), or an ``s3://bucket/key`` URI (a literal).
    target:
        ``TargetDevice`` or its name (``"rasp4b"``): the names ``NeoCompilationJob`` takes.
        A ``TargetPlatform`` is refused: the compile module takes device names.
    framework:
        ``Framework.XGBOOST``, ``ONNX``, ``PYTORCH`` or ``SKLEARN`` (or the name).
        Default: detected from the archive by the compiler.
    data_input_config:
        Input name to shape (``{"input": [1, 3, 224, 224]}``), passed as ``--input-shape``.
        Default: the shapes the model declares.
    model_name, model_version:
        The model's name and version in the artifact's manifest. Default: the compiler's
        (the model file's name; ``1.0.0``).
    model_file:
        The file in the archive to compile, when it holds several models. Default: the
        compiler picks the one model it finds.
    tuning_db:
        A key prefix in ``bucket`` holding a MetaSchedule tuning database (from
        ``neo-edge compile --tuning-db``); the build reads it. Default: no tuning records.
    output_prefix:
        Key prefix of the compiled models in ``bucket``, ending in ``/``.
        Default: ``compiled/<id>/``.
    max_runtime:
        The build's timeout, at most 50 minutes (installing the compiler takes a few).
        Default: 30 minutes.
    compute_type:
        The CodeBuild compute type. Default: ``BUILD_GENERAL1_LARGE`` (8 vCPUs, 15 GB).
    role:
        The role CodeBuild assumes. Default: a role is created that reads the wheel, the
        model (and the tuning records), writes the output prefix and its own log group,
        and uses the bucket's KMS key only when the bucket has one.
    run_id:
        Change it to compile the same inputs again. Default: none.
    signing_key:
        An ``ArtifactSigningKey``: every build (deploy-time and retraining runs) signs the
        artifact's manifest with it through KMS (``manifest.json.sig``), and the role gets
        ``kms:Sign`` on it. Give the same key to ``EdgeInferenceComponent(signing_key=...)``
        so devices check the signature. A new key compiles again (it is part of the
        output key). Default: not signed.

    Attributes
    ----------
    compiled_model_uri (deploy-time ``s3://`` URI, a token), compiled_model_key,
    report_key, target, target_spec, bucket, output_prefix, fingerprint, project, role,
    log_group, resource, build_id, command, signing_key
    """

    def __init__(
        self, scope: Construct, id: str, *,
        bucket: Union[s3.IBucket, IModelArtifactBucket],
        model: Union[TrainingJob, str],
        target: TargetLike,
        framework: Union[None, str, Framework] = None,
        data_input_config: Optional[Mapping[str, Sequence[int]]] = None,
        model_name: Optional[str] = None,
        model_version: Optional[str] = None,
        model_file: Optional[str] = None,
        tuning_db: Optional[str] = None,
        output_prefix: Optional[str] = None,
        max_runtime: cdk.Duration = cdk.Duration.minutes(30),
        compute_type: codebuild.ComputeType = codebuild.ComputeType.LARGE,
        role: Optional[iam.IRole] = None,
        run_id: Optional[str] = None,
        signing_key: Optional[ArtifactSigningKey] = None,
    ) -> None:
        super().__init__(scope, id)
        # --- checks ------------------------------------------------------------------
        _check_signing_key(signing_key)
        #: The ``ArtifactSigningKey`` the builds sign with, or ``None``.
        self.signing_key: Optional[ArtifactSigningKey] = signing_key
        self.bucket = as_bucket(bucket)
        #: The ``Framework``, or ``None`` (detected by the compiler).
        self.framework = _framework(framework)
        shapes = _shapes(data_input_config)
        #: The ``TargetDevice`` or ``TargetPlatform``.
        self.target: Union[TargetDevice, TargetPlatform] = as_target(target)
        if isinstance(self.target, TargetPlatform):
            # Checked here rather than after a build's minutes of set-up: the compile
            # module's --target takes the target table's device names.
            raise ValueError(f"target must be a target device for the neo-edge compiler in "
                             f"AWS (its --target takes device names: rasp4b, jetson_xavier, "
                             f"ml_c5, ...); got {self.target!r}: name a device of that platform "
                             f"(for a generic one, compile locally with neo-edge compile and "
                             f"ship the folder, or use NeoCompilationJob for SageMaker)")
        #: The row of the target table the model is compiled for.
        self.target_spec = self.target.target
        runtime_s = check_runtime("max_runtime", max_runtime)
        #: The build's timeout in seconds (a retraining run's polls cover it).
        self.max_runtime_s = runtime_s
        output_prefix = output_prefix or f"compiled/{id}/"
        _check_prefix("output_prefix", output_prefix)
        if tuning_db is not None:
            _check_prefix("tuning_db", tuning_db)
        for label, value in (("model_name", model_name), ("model_version", model_version),
                             ("model_file", model_file)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{label} must be a non-empty string; got {value!r}")
        model_uri, read, model_fingerprint = _model_source(self, self.bucket, model)
        stack = cdk.Stack.of(self)
        wheel = _CompilerWheel.of(self)

        # --- what identifies one compilation --------------------------------------------
        arguments = ["--target", self.target_spec.name]
        if self.framework is not None:
            arguments += ["--framework", self.framework.name.lower()]
        for shape in shapes:
            arguments += ["--input-shape", shape]
        if tuning_db is not None:
            arguments += ["--tuning-db", self.bucket.s3_url_for_object(tuning_db)]
        for flag, value in (("--name", model_name), ("--version", model_version),
                            ("--model-file", model_file)):
            if value is not None:
                arguments += [flag, value]
        #: What changes whenever the compiled model does: the model's source, the
        #: compiler's arguments and wheel, and the run id (JSON-able, tokens resolved).
        self.fingerprint: dict = {
            "model": model_fingerprint, "arguments": stack.resolve(arguments),
            "wheel": wheel.sha256, "run_id": run_id or ""}
        if signing_key is not None:
            # Signing switched on, or another key: compile (and sign) again, so that the
            # component never ships an output signed otherwise than its devices expect.
            self.fingerprint["signing_key"] = stack.resolve(signing_key.key_arn)
        digest = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True,
                                           default=str).encode()).hexdigest()[:16]
        #: The prefix the compiled models are written under (this job's and the runs' of a
        #: ``RetrainPipeline``).
        self.output_prefix = output_prefix
        #: The key of this deployment's compiled model.
        self.compiled_model_key = f"{output_prefix}{digest}/model.tar.gz"
        #: The key of the compiler's report.
        self.report_key = f"{output_prefix}{digest}/compile-report.json"
        output_uri = self.bucket.s3_url_for_object(f"{output_prefix}{digest}/")

        # --- the role ------------------------------------------------------------------
        self.log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.THREE_MONTHS,
                                       removal_policy=cdk.RemovalPolicy.RETAIN)
        if role is None:
            role = iam.Role(self, "Role",
                            assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
                            description=f"neo-edge compilation build {self.node.path}")
        self.role: iam.IRole = role
        policy = RolePolicy(self, role)
        read(policy)
        if tuning_db is not None:
            policy.read(self.bucket, tuning_db)
        policy.write(self.bucket, output_prefix)
        asset = wheel.asset
        # CodeBuild downloads an S3 source with these (its documented service role policy).
        policy.add(["s3:GetObject", "s3:GetObjectVersion"],
                   [asset.bucket.arn_for_objects(asset.s3_object_key)])
        policy.add(["s3:GetBucketAcl", "s3:GetBucketLocation"], [asset.bucket.bucket_arn])
        policy.add(["logs:CreateLogStream", "logs:PutLogEvents"], [self.log_group.log_group_arn])
        if signing_key is not None:
            signing_key.grant_sign(role)  # kms:Sign on the key only
        # As NeoCompilationJob: on a role of this library's kind (created here or by an
        # EdgeCompilationSet, or one passed in as an iam.Role), the prefix wildcards it got.
        if isinstance(role, iam.Role):
            acknowledge_wildcards(
                self, role.node.try_find_child("DefaultPolicy"), policy._wildcards,
                "the compiler reads the model (and tuning records) and writes the compiled "
                "model and its report under fixed key prefixes of the artifact bucket, with "
                "file names the model's archive and the run choose; the wildcard covers only "
                "those prefixes, and the exact S3 actions needed are listed")

        # --- the project -------------------------------------------------------------------
        #: The compile command the build runs (MODEL_URI and OUTPUT_URI come with each build;
        #: the signing key's ARN and public key are the project's environment).
        self.command = ("python -m neo_edge_runtime.compile.cloud --model \"$MODEL_URI\" "
                        "--output \"$OUTPUT_URI\" " + " ".join(
                            shlex.quote(a) if not cdk.Token.is_unresolved(a) else a
                            for a in arguments))
        environment_variables = {}
        if signing_key is not None:
            self.command += (f' --signing-kms-key "${SIGNING_KMS_KEY_VARIABLE}"'
                             f' --signing-public-key "${SIGNING_PUBLIC_KEY_VARIABLE}"')
            environment_variables = {
                SIGNING_KMS_KEY_VARIABLE: codebuild.BuildEnvironmentVariable(
                    value=signing_key.key_arn),
                SIGNING_PUBLIC_KEY_VARIABLE: codebuild.BuildEnvironmentVariable(
                    value=signing_key.public_key)}
        install = []
        cross = CROSS_COMPILER_PACKAGES.get(self.target_spec.arch)
        if self.target_spec.is_cross and cross:
            install.append("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                           f"apt-get install -y -qq --no-install-recommends {cross}")
        install += [
            "python -m pip install --quiet --disable-pip-version-check --only-binary=:all: "
            f"-r {_REQUIREMENTS_FILE}",
            "python -m pip install --quiet --disable-pip-version-check --no-deps "
            f"./{wheel.wheel_name}",
        ]
        spec = {
            "version": "0.2",
            "phases": {
                "install": {"runtime-versions": {"python": PYTHON_VERSION}, "commands": install},
                "pre_build": {"commands": [
                    'test -n "$MODEL_URI" && test -n "$OUTPUT_URI" || { echo "MODEL_URI and '
                    'OUTPUT_URI must be set: start this build with both" >&2; exit 1; }']},
                "build": {"commands": [self.command]},
            },
        }
        #: The CodeBuild project.
        self.project = codebuild.Project(
            self, "Project",
            description=f"neo-edge: compiles a model for {self.target_spec.name}",
            source=codebuild.Source.s3(bucket=asset.bucket, path=asset.s3_object_key),
            environment=codebuild.BuildEnvironment(build_image=BUILD_IMAGE,
                                                   compute_type=compute_type,
                                                   privileged=False),
            build_spec=codebuild.BuildSpec.from_object(spec),
            environment_variables=environment_variables or None,
            # Every statement the build needs is added above, exactly; CodeBuild's own
            # defaults (report groups, the asset bucket's List*/GetBucket*) are not wanted.
            role=role.without_policy_updates(),
            timeout=cdk.Duration.minutes(max(1, -(-runtime_s // 60))),
            logging=codebuild.LoggingOptions(cloud_watch=codebuild.CloudWatchLoggingOptions(
                log_group=self.log_group)),
        )
        acknowledge(self.project, "CB4",
                    "the project makes no build artifacts (NO_ARTIFACTS) for CodeBuild to "
                    "encrypt; its one output, the compiled model, is written by the build to "
                    "the artifact bucket, which encrypts it with the bucket's own key")

        # --- the deploy-time run -----------------------------------------------------------
        provider = SageMakerJobProvider.of(self)
        request = {"environmentVariablesOverride": [
            {"name": "MODEL_URI", "value": model_uri, "type": "PLAINTEXT"},
            {"name": "OUTPUT_URI", "value": output_uri, "type": "PLAINTEXT"}]}
        self.resource = provider.build_resource(
            self, "Resource", project=self.project, request=request, output_uri=output_uri,
            role=role, run_id=run_id)
        #: The build's id (``<project>:<uuid>``).
        self.build_id: str = self.resource.get_att_string("BuildId")
        #: The compiled model's ``s3://`` URI (known at deploy time).
        self.compiled_model_uri: str = self.resource.get_att_string("ModelArtifacts")

    @property
    def artifact_format(self) -> str:
        """``neo-edge``: the artifact ``EdgeModel.load`` reads (``manifest.json`` at its root)."""
        return "neo-edge"

    @classmethod
    def for_targets(cls, scope: Construct, id: str, *, targets: Sequence[TargetLike],
                    **props: Any) -> dict:
        """Compile one model for each of ``targets``: an ``EdgeCompilationSet``'s jobs,
        by target name (``{"rasp4b": job, "jetson_xavier": job}``)."""
        return EdgeCompilationSet(scope, id, targets=targets, **props).jobs


class EdgeCompilationSet(Construct):
    """One model compiled by neo-edge's compiler for several targets.

    Each target gets an ``EdgeCompilationJob`` with the construct id of its name, output
    under ``<output_prefix><target name>/``, sharing one CodeBuild role.

    Parameters
    ----------
    targets:
        Target names or ``TargetDevice`` values; no duplicates.
    output_prefix:
        Default: ``compiled/<id>/``.
    role:
        Default: one role is created for all the jobs.
    signing_key:
        An ``ArtifactSigningKey`` every job signs with (see ``EdgeCompilationJob``).
        Default: not signed.
    **props:
        Everything else ``EdgeCompilationJob`` takes (``bucket``, ``model``,
        ``framework``, ``data_input_config``, ...).
    """

    def __init__(self, scope: Construct, id: str, *, targets: Sequence[TargetLike],
                 output_prefix: Optional[str] = None, role: Optional[iam.IRole] = None,
                 signing_key: Optional[ArtifactSigningKey] = None,
                 **props: Any) -> None:
        super().__init__(scope, id)
        _check_signing_key(signing_key)
        #: The ``ArtifactSigningKey`` the jobs sign with, or ``None``.
        self.signing_key: Optional[ArtifactSigningKey] = signing_key
        if isinstance(targets, (str, TargetDevice, TargetPlatform)) or not targets:
            raise ValueError(f"targets must be a non-empty list of target names, TargetDevice "
                             f"or TargetPlatform values; got {targets!r}")
        resolved = [as_target(t) for t in targets]
        names = [t.name for t in resolved]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"targets must not repeat a target; got {', '.join(duplicates)} "
                             f"more than once")
        prefix = output_prefix or f"compiled/{id}/"
        _check_prefix("output_prefix", prefix)
        if role is None:
            role = iam.Role(self, "Role",
                            assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
                            description=f"neo-edge compilation builds {self.node.path}")
        self.role: iam.IRole = role
        #: Target name to its job.
        self.jobs: dict = {}
        for target in resolved:
            self.jobs[target.name] = EdgeCompilationJob(
                self, target.name, target=target, role=role,
                output_prefix=f"{prefix}{target.name}/", signing_key=signing_key, **props)

    def __getitem__(self, name: str) -> EdgeCompilationJob:
        return self.jobs[name]
