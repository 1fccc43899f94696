"""Enum-like choices for SageMaker training, Neo compilation and hosting.

Every choice is backed by ``neo_edge_runtime.targets``, the table the local compiler
compiles from: a target name, framework or platform that the constructs accept is one
the local compiler knows, and the messages are the same.

- :class:`Framework` (``Framework.ONNX``, ``Framework.of("pytorch")``)
- :class:`TargetDevice` (``TargetDevice.RASP4B``, ``TargetDevice.of("jetson_xavier")``)
- :class:`TargetPlatform` (``TargetPlatform.LINUX_ARM64``, ``TargetPlatform.of(...)``)
- :class:`CompilerOptions` (``CompilerOptions.nvidia(gpu_code="sm_72", ...)``)
- :func:`data_input_config`: Neo's ``DataInputConfig`` from a mapping of input shapes
- :class:`InstanceType` (``InstanceType.ML_C5_XLARGE``, ``InstanceType.of("ml.g4dn.xlarge")``)
- :class:`AlgorithmImage` and :class:`NeoInferenceImage`: container images per region
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional, Sequence, Union

import aws_cdk as cdk
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from constructs import Construct
from neo_edge_runtime import targets as _targets
from neo_edge_runtime.errors import TargetError

__all__ = [
    "AlgorithmImage", "CompilerOptions", "Framework", "InstanceType", "NEO_INFERENCE_ACCOUNTS",
    "NEO_INFERENCE_REPOSITORIES", "NeoInferenceImage", "Target", "TargetDevice", "TargetPlatform",
    "XGBOOST_ACCOUNTS", "XGBOOST_VERSIONS", "as_instance_type", "as_target", "data_input_config",
]


def _unresolved(value: Any) -> bool:
    return isinstance(value, str) and cdk.Token.is_unresolved(value)


# ---------------------------------------------------------------------------------------
# Framework


class Framework:
    """A model framework as SageMaker Neo names it (``InputConfig.Framework``)."""

    ONNX: "Framework"
    XGBOOST: "Framework"
    PYTORCH: "Framework"
    TFLITE: "Framework"
    TENSORFLOW: "Framework"
    KERAS: "Framework"
    MXNET: "Framework"
    DARKNET: "Framework"
    SKLEARN: "Framework"

    def __init__(self, spec: _targets.FrameworkSpec) -> None:
        self._spec = spec

    @classmethod
    def of(cls, name: str) -> "Framework":
        """The framework called ``name`` (case-insensitive).

        Raises ``ValueError`` naming the frameworks that exist.
        """
        return cls(_targets.framework(name))

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def takes_version(self) -> bool:
        """Whether CreateCompilationJob accepts a ``FrameworkVersion`` for it."""
        return self._spec.takes_version

    @property
    def versions(self) -> tuple:
        return tuple(self._spec.versions)

    @property
    def needs_shapes(self) -> bool:
        """Whether a ``DataInputConfig`` of input shapes is required."""
        return self._spec.needs_shapes

    @property
    def nchw(self) -> bool:
        """Whether its image inputs are channels-first (NCHW)."""
        return self._spec.nchw

    def check_version(self, version: Optional[str]) -> Optional[str]:
        """``version`` if this framework takes it; raise ``ValueError`` otherwise."""
        if version is None or _unresolved(version):
            return version
        if not self.takes_version:
            raise ValueError(f"framework_version must not be given for framework {self.name}, "
                             f"which takes none; got {version!r}")
        if self.versions and version not in self.versions:
            raise ValueError(f"framework_version for {self.name} must be one of "
                             f"{', '.join(self.versions)}; got {version!r}")
        return version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Framework) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Framework.{self.name}"


for _name in _targets.FRAMEWORKS:
    setattr(Framework, _name, Framework.of(_name))


# ---------------------------------------------------------------------------------------
# Targets


class TargetDevice:
    """A SageMaker Neo ``TargetDevice`` (``OutputConfig.TargetDevice``)."""

    def __init__(self, target: _targets.Target) -> None:
        self._target = target

    @classmethod
    def of(cls, name: str) -> "TargetDevice":
        """The device Neo calls ``name`` (``rasp4b``, ``jetson_xavier``, ``ml_c5``, ...).

        Raises ``ValueError`` for a name the target table does not have, listing those
        it has (and why, for the devices this project cannot compile for).
        """
        if isinstance(name, str) and name.strip().lower() == "host":
            raise ValueError(f"target_device must be one of {', '.join(sorted(_targets.TARGET_DEVICES))}; "
                             f"got 'host' (the local compiler's own machine is no Neo device)")
        return cls(_targets.resolve(name))

    @property
    def name(self) -> str:
        return self._target.name

    @property
    def target(self) -> _targets.Target:
        """The row of the target table."""
        return self._target

    @property
    def instance_family(self) -> Optional[str]:
        """The SageMaker hosting instance family (``ml.c5``), or ``None`` for edge devices."""
        return self._target.instance_family

    @property
    def is_nvidia(self) -> bool:
        return self._target.device == "cuda"

    def output_config(self) -> dict:
        """The part of ``OutputConfig`` that names the target."""
        return {"TargetDevice": self.name}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TargetDevice) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"TargetDevice.{self.name.upper()}"


for _name in _targets.TARGET_DEVICES:
    setattr(TargetDevice, _name.upper(), TargetDevice.of(_name))


class TargetPlatform:
    """A SageMaker Neo ``TargetPlatform``: operating system, architecture, accelerator.

    An NVIDIA platform also needs ``CompilerOptions.nvidia(...)`` (gpu-code, trt-ver,
    cuda-ver); that is checked where the two meet (``NeoCompilationJob``).
    """

    LINUX_X86_64: "TargetPlatform"
    LINUX_ARM64: "TargetPlatform"
    LINUX_ARM_EABIHF: "TargetPlatform"
    LINUX_ARM64_NVIDIA: "TargetPlatform"
    LINUX_X86_64_NVIDIA: "TargetPlatform"

    def __init__(self, os: str, arch: str, accelerator: Optional[str] = None) -> None:
        # Everything but the compiler options, which are not known yet: placeholders.
        placeholder = {k: "sm_0" for k in _targets.NVIDIA_COMPILER_OPTIONS}
        placeholder["ANDROID_PLATFORM"] = 29
        _targets.resolve_platform(os, arch, accelerator, placeholder)
        self.os = os
        self.arch = arch
        self.accelerator = accelerator

    @classmethod
    def of(cls, os: str, arch: str, accelerator: Optional[str] = None) -> "TargetPlatform":
        """A platform; raises ``ValueError`` naming the allowed os, arch and accelerators."""
        return cls(os, arch, accelerator)

    @property
    def name(self) -> str:
        return f"{self.os}_{self.arch}".lower() + (
            f"_{self.accelerator.lower()}" if self.accelerator else "")

    @property
    def is_nvidia(self) -> bool:
        return self.accelerator == "NVIDIA"

    @property
    def instance_family(self) -> None:
        """Platforms are edge targets: no SageMaker hosting instance family."""
        return None

    def resolve(self, compiler_options: Optional["CompilerOptions"]) -> _targets.Target:
        """The target-table row for this platform with these compiler options.

        Raises ``ValueError`` for an NVIDIA platform without gpu-code, trt-ver and cuda-ver.
        """
        options = compiler_options.options if compiler_options is not None else None
        return _targets.resolve_platform(self.os, self.arch, self.accelerator, options)

    def output_config(self) -> dict:
        platform = {"Os": self.os, "Arch": self.arch}
        if self.accelerator:
            platform["Accelerator"] = self.accelerator
        return {"TargetPlatform": platform}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TargetPlatform) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"TargetPlatform.{self.name.upper()}"


TargetPlatform.LINUX_X86_64 = TargetPlatform("LINUX", "X86_64")
TargetPlatform.LINUX_ARM64 = TargetPlatform("LINUX", "ARM64")
TargetPlatform.LINUX_ARM_EABIHF = TargetPlatform("LINUX", "ARM_EABIHF")
TargetPlatform.LINUX_ARM64_NVIDIA = TargetPlatform("LINUX", "ARM64", "NVIDIA")
TargetPlatform.LINUX_X86_64_NVIDIA = TargetPlatform("LINUX", "X86_64", "NVIDIA")

#: Either kind of compilation target.
Target = Union[TargetDevice, TargetPlatform]


def as_target(value: Union[str, TargetDevice, TargetPlatform]) -> Union[TargetDevice, TargetPlatform]:
    """A ``TargetDevice`` for a name; devices and platforms unchanged."""
    if isinstance(value, (TargetDevice, TargetPlatform)):
        return value
    if isinstance(value, str):
        return TargetDevice.of(value)
    raise ValueError(f"target must be a TargetDevice, a TargetPlatform or a device name; "
                     f"got {value!r}")


class CompilerOptions:
    """Neo's ``OutputConfig.CompilerOptions``: a JSON object of option name to value."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ValueError(f"compiler_options must be a mapping of option name to value; "
                             f"got {options!r}")
        try:
            json.dumps(dict(options))
        except TypeError:
            raise ValueError(f"compiler_options values must be JSON values; got {options!r}") \
                from None
        self.options = dict(options)

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> "CompilerOptions":
        return cls(options)

    @classmethod
    def nvidia(cls, *, gpu_code: str, trt_ver: str, cuda_ver: str,
               **extra: Any) -> "CompilerOptions":
        """The options Neo requires with an NVIDIA ``TargetPlatform``.

        ``gpu_code`` is the CUDA arch (``sm_72``), ``trt_ver`` the TensorRT version
        (``8.4.0``) and ``cuda_ver`` the CUDA version (``11.4``) of the device.
        """
        options = cls({"gpu-code": gpu_code, "trt-ver": trt_ver, "cuda-ver": cuda_ver, **extra})
        _targets.validate_platform("LINUX", "ARM64", "NVIDIA", options.options)
        return options

    def to_json(self) -> str:
        return json.dumps(self.options, sort_keys=True)

    def __repr__(self) -> str:
        return f"CompilerOptions({self.options!r})"


# ---------------------------------------------------------------------------------------
# DataInputConfig

_EXAMPLE = "e.g. {'input': [1, 3, 224, 224]}"


def _looks_channels_last(shape: Sequence[int]) -> bool:
    """A 4-d image shape with a few channels last and many first: NHWC, not NCHW."""
    return len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)


def data_input_config(framework: Framework,
                      shapes: Optional[Mapping[str, Sequence[int]]]) -> Optional[str]:
    """Neo's ``InputConfig.DataInputConfig`` JSON for ``framework``, checked.

    Parameters
    ----------
    framework:
        The model's framework.
    shapes:
        Input name to shape (``{"input": [1, 3, 224, 224]}``). Required for every
        framework but XGBoost, which takes none. For channels-first frameworks (ONNX,
        PyTorch, ...) a 4-d shape must be NCHW.

    Raises
    ------
    ValueError
        With the value received and what is allowed.
    """
    if shapes is not None and (_unresolved(shapes) or cdk.Token.is_unresolved(shapes)):
        return shapes  # type: ignore[return-value]
    if not framework.needs_shapes:
        if shapes is not None:
            raise ValueError(f"data_input_config must not be given for framework "
                             f"{framework.name}, which takes no input shapes; got {shapes!r}")
        return None
    if shapes is None:
        raise ValueError(f"data_input_config is required for framework {framework.name}: a "
                         f"mapping of input name to shape, {_EXAMPLE}")
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValueError(f"data_input_config must be a mapping of input name to shape, "
                         f"{_EXAMPLE}; got {shapes!r}")
    out: dict = {}
    for name, shape in shapes.items():
        ok = (isinstance(name, str) and name and isinstance(shape, (list, tuple)) and shape
              and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape))
        if not ok:
            raise ValueError(f"data_input_config must be a mapping of input name to shape (a "
                             f"list of positive integers), {_EXAMPLE}; got {name!r}: {shape!r}")
        if framework.nchw and _looks_channels_last(shape):
            n, h, w, c = shape
            raise ValueError(f"data_input_config shape of {name!r} looks channels-last (NHWC): "
                             f"{list(shape)}; framework {framework.name} expects NCHW, e.g. "
                             f"{[n, c, h, w]}")
        out[name] = list(shape)
    return json.dumps(out)


# ---------------------------------------------------------------------------------------
# Instance types

_INSTANCE_RE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")


class InstanceType:
    """A SageMaker instance type (``ml.c5.xlarge``)."""

    ML_C5_LARGE: "InstanceType"
    ML_C5_XLARGE: "InstanceType"
    ML_C5_2XLARGE: "InstanceType"
    ML_C5_4XLARGE: "InstanceType"
    ML_M5_LARGE: "InstanceType"
    ML_M5_XLARGE: "InstanceType"
    ML_M5_2XLARGE: "InstanceType"
    ML_M5_4XLARGE: "InstanceType"
    ML_C6G_LARGE: "InstanceType"
    ML_C6G_XLARGE: "InstanceType"
    ML_M6G_LARGE: "InstanceType"
    ML_M6G_XLARGE: "InstanceType"
    ML_P3_2XLARGE: "InstanceType"
    ML_G4DN_XLARGE: "InstanceType"
    ML_G4DN_2XLARGE: "InstanceType"

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not (_unresolved(name) or _INSTANCE_RE.match(name)):
            raise ValueError(f"instance type must look like 'ml.<family>.<size>' "
                             f"(e.g. ml.c5.xlarge); got {name!r}")
        self.name = name

    @classmethod
    def of(cls, name: str) -> "InstanceType":
        return cls(name)

    @property
    def family(self) -> Optional[str]:
        """``ml.c5`` for ``ml.c5.xlarge``; ``None`` for an unresolved token."""
        if _unresolved(self.name):
            return None
        return self.name.rsplit(".", 1)[0]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"InstanceType({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceType) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


for _name in [n for n in vars(InstanceType).get("__annotations__", {})]:
    setattr(InstanceType, _name, InstanceType(_name.lower().replace("_", ".", 2)))


def as_instance_type(value: Union[str, InstanceType]) -> InstanceType:
    return value if isinstance(value, InstanceType) else InstanceType.of(value)


# ---------------------------------------------------------------------------------------
# Container images, resolved per region by a CfnMapping (works in region-agnostic stacks)

#: Accounts of the SageMaker built-in XGBoost algorithm images (``sagemaker-xgboost``),
#: as the SageMaker Python SDK lists them.
XGBOOST_ACCOUNTS: Mapping[str, str] = {
    "af-south-1": "510948584623", "ap-east-1": "651117190479",
    "ap-northeast-1": "354813040037", "ap-northeast-2": "366743142698",
    "ap-northeast-3": "867004704886", "ap-south-1": "720646828776",
    "ap-southeast-1": "121021644041", "ap-southeast-2": "783357654285",
    "ca-central-1": "341280168497", "eu-central-1": "492215442770",
    "eu-north-1": "662702820516", "eu-south-1": "978288397137",
    "eu-west-1": "141502667606", "eu-west-2": "764974769150", "eu-west-3": "659782779980",
    "me-south-1": "801668240914", "sa-east-1": "737474898029",
    "us-east-1": "683313688378", "us-east-2": "257758044811",
    "us-west-1": "746614075791", "us-west-2": "246618743249",
}
XGBOOST_VERSIONS = ("1.0-1", "1.2-1", "1.2-2", "1.3-1", "1.5-1", "1.7-1")

#: Accounts of the SageMaker Neo inference containers (``sagemaker-inference-*``,
#: ``xgboost-neo``), as the SageMaker Python SDK lists them.
NEO_INFERENCE_ACCOUNTS: Mapping[str, str] = {
    "af-south-1": "774647643957", "ap-east-1": "110948597952",
    "ap-northeast-1": "941853720454", "ap-northeast-2": "151534178276",
    "ap-south-1": "763008648453", "ap-southeast-1": "324986816169",
    "ap-southeast-2": "355873309152", "ca-central-1": "464438896020",
    "eu-central-1": "746233611703", "eu-north-1": "601324751636",
    "eu-south-1": "966458181534", "eu-west-1": "802834080501", "eu-west-2": "205493899709",
    "eu-west-3": "254080097072", "me-south-1": "836785723513", "sa-east-1": "756306329178",
    "us-east-1": "785573368785", "us-east-2": "007439368137", "us-west-1": "710691900526",
    "us-west-2": "301217895009",
}

#: Neo inference container repository per framework: (repository, versions or None).
NEO_INFERENCE_REPOSITORIES: Mapping[str, tuple] = {
    "PYTORCH": ("sagemaker-inference-pytorch", ("1.4", "1.5", "1.6", "1.7", "1.8", "1.12")),
    "MXNET": ("sagemaker-inference-mxnet", ("1.8",)),
    "TENSORFLOW": ("sagemaker-inference-tensorflow", ("1.15", "2.4", "2.5", "2.6")),
    "XGBOOST": ("xgboost-neo", None),
}


def _region_mapping(scope: Construct, id: str, accounts: Mapping[str, str]) -> cdk.CfnMapping:
    stack = cdk.Stack.of(scope)
    existing = stack.node.try_find_child(id)
    if existing is not None:
        return existing  # type: ignore[return-value]
    return cdk.CfnMapping(stack, id, lazy=True,
                          mapping={region: {"account": account}
                                   for region, account in sorted(accounts.items())})


def _image_uri(scope: Construct, mapping_id: str, accounts: Mapping[str, str],
               repository: str, tag: str) -> str:
    stack = cdk.Stack.of(scope)
    region = stack.region
    if not cdk.Token.is_unresolved(region) and region not in accounts:
        raise ValueError(f"{repository} images are not published in region {region!r}; "
                         f"regions are {', '.join(sorted(accounts))}")
    # A literal region (an environment-specific stack) inlines the account; otherwise
    # Fn::FindInMap on AWS::Region picks it at deploy time.
    account = _region_mapping(scope, mapping_id, accounts).find_in_map(region, "account")
    return f"{account}.dkr.ecr.{region}.{stack.url_suffix}/{repository}:{tag}"


class AlgorithmImage:
    """The training container: a SageMaker built-in algorithm or an image in ECR."""

    def __init__(self, *, repository: Optional[ecr.IRepository] = None, tag: str = "latest",
                 builtin: Optional[tuple] = None, name: str = "") -> None:
        self._repository = repository
        self._tag = tag
        self._builtin = builtin
        self.name = name

    @classmethod
    def xgboost(cls, version: str = "1.7-1") -> "AlgorithmImage":
        """SageMaker's built-in XGBoost algorithm (``sagemaker-xgboost:<version>``)."""
        if version not in XGBOOST_VERSIONS:
            raise ValueError(f"xgboost version must be one of {', '.join(XGBOOST_VERSIONS)}; "
                             f"got {version!r}")
        return cls(builtin=("sagemaker-xgboost", version, XGBOOST_ACCOUNTS),
                   name=f"xgboost:{version}")

    @classmethod
    def from_ecr_repository(cls, repository: ecr.IRepository,
                            tag: str = "latest") -> "AlgorithmImage":
        """An image in your ECR repository; the job's role is granted pull on it."""
        return cls(repository=repository, tag=tag, name=f"ecr:{tag}")

    @property
    def is_builtin(self) -> bool:
        return self._builtin is not None

    def bind(self, scope: Construct, grantee: iam.IGrantable) -> str:
        """The image URI; grants ``grantee`` what pulling it needs."""
        if self._builtin is not None:
            repository, tag, accounts = self._builtin
            return _image_uri(scope, "NeoEdgeSageMakerAlgorithmAccounts", accounts,
                              repository, tag)
        assert self._repository is not None
        self._repository.grant_pull(grantee)
        return self._repository.repository_uri_for_tag(self._tag)


class NeoInferenceImage:
    """The SageMaker Neo inference container that serves a compiled model."""

    def __init__(self, uri_factory, name: str) -> None:
        self._factory = uri_factory
        self.name = name

    @classmethod
    def for_framework(cls, framework: Framework, *, version: Optional[str] = None,
                      gpu: bool = False) -> "NeoInferenceImage":
        """Neo's inference container for ``framework`` (PyTorch, MXNet, TensorFlow, XGBoost).

        Raises ``ValueError`` for a framework Neo publishes no inference container for
        (serve those with the image the compilation job reports).
        """
        if framework.name not in NEO_INFERENCE_REPOSITORIES:
            raise ValueError(f"framework {framework.name} has no Neo inference container; "
                             f"frameworks with one are {', '.join(NEO_INFERENCE_REPOSITORIES)} "
                             f"(for others, serve the compilation job's inference image)")
        repository, versions = NEO_INFERENCE_REPOSITORIES[framework.name]
        if versions is None:
            tag = "latest"
        else:
            if version not in versions:
                raise ValueError(f"framework_version for the {framework.name} Neo inference "
                                 f"container must be one of {', '.join(versions)}; "
                                 f"got {version!r}")
            tag = f"{version}-{'gpu' if gpu else 'cpu'}-py3"
        return cls(lambda scope: _image_uri(scope, "NeoEdgeNeoInferenceAccounts",
                                            NEO_INFERENCE_ACCOUNTS, repository, tag),
                   f"{repository}:{tag}")

    @classmethod
    def from_uri(cls, uri: str) -> "NeoInferenceImage":
        """An image by URI, e.g. the compilation job's ``inference_image`` attribute."""
        return cls(lambda _scope: uri, "uri")

    def bind(self, scope: Construct) -> str:
        return self._factory(scope)


__all__ += ["TargetError"]
