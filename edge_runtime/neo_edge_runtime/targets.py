"""The target and framework table: SageMaker Neo's names mapped to TVM targets.

Pure data, importable without TVM: the CDK constructs validate against this same
table, and the local compiler compiles from it. One source of truth.

A target is either a ``TargetDevice`` name as SageMaker Neo spells it (``rasp4b``,
``jetson_xavier``, ``ml_c5``, ...), a ``TargetPlatform`` (os, arch, accelerator), or
``host`` (the machine the compiler runs on).
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from .errors import TargetError


# Greengrass V2 platform architectures, as the nucleus reports them.
GG_AMD64 = "amd64"
GG_AARCH64 = "aarch64"
GG_ARM = "arm"

#: Device architectures (``uname -m``) the edge runtime runs on: those apache-tvm publishes
#: wheels for, whose runtime library the device bundle carries. 32-bit ARM (armv7l) has no
#: wheel and no source distribution to build one from: artifacts cross-compile for it, but
#: nothing here can run them.
RUNTIME_ARCHES = ("x86_64", "aarch64")

#: The CUDA major version ``libtvm_runtime_cuda.so`` of those wheels links (``libcudart.so.13``),
#: and the oldest NVIDIA GPU generation that CUDA version runs: CUDA 13 dropped compute
#: capability below 7.5 (Maxwell, Pascal, Volta; among Jetsons the TX1, TX2, Nano and
#: Xavier, whose last JetPack ships CUDA 11).
CUDA_RUNTIME_MAJOR = 13
CUDA_MIN_COMPUTE_CAPABILITY = (7, 5)

#: The device bundles there are: one per architecture, and one with the CUDA runtime.
RUNTIME_BUNDLES = (*RUNTIME_ARCHES, *(f"{arch}-cuda" for arch in RUNTIME_ARCHES))

# Cross toolchains (Debian packages) that link device libraries on the build machine.
AARCH64_CC = "aarch64-linux-gnu-gcc"
ARMHF_CC = "arm-linux-gnueabihf-gcc"


@dataclass(frozen=True)
class Target:
    """One compilation target.

    Attributes
    ----------
    name:
        Neo's name (``rasp4b``) or a platform name (``linux_arm64``).
    description:
        What the device is, for people.
    device:
        ``"cpu"`` or ``"cuda"``: where the model runs.
    arch:
        Machine architecture as ``uname -m`` prints it on the device
        (``x86_64``, ``aarch64``, ``armv7l``).
    tvm_target:
        The TVM target as a JSON-able dict (``{"kind": "llvm", ...}``).
    cross_compiler:
        The C compiler that links the shared library, or ``None`` for the host's.
    instance_family:
        For SageMaker hosting targets, the instance family (``ml.c5``); else ``None``.
    """

    name: str
    description: str
    device: str
    arch: str
    tvm_target: Mapping[str, Any]
    cross_compiler: Optional[str] = None
    instance_family: Optional[str] = None

    @property
    def elf_machine(self) -> str:
        """The ELF ``e_machine`` name a library built for this target carries."""
        return {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64", "armv7l": "EM_ARM"}[self.arch]

    @property
    def greengrass_platform(self) -> dict:
        """The Greengrass V2 recipe ``Platform`` this target's artifact is for."""
        gg_arch = {"x86_64": GG_AMD64, "aarch64": GG_AARCH64, "armv7l": GG_ARM}[self.arch]
        plat = {"os": "linux", "architecture": gg_arch}
        if self.device == "cuda":
            # Greengrass has no built-in accelerator attribute: NVIDIA devices declare
            # it through the nucleus' platformOverride (see the README).
            plat["accelerator"] = "nvidia"
        return plat

    @property
    def is_cross(self) -> bool:
        return self.cross_compiler is not None

    @property
    def runtime_bundle(self) -> str:
        """The device bundle an artifact for this target runs from (``RUNTIME_BUNDLES``)."""
        return f"{self.arch}-cuda" if self.device == "cuda" else self.arch

    @property
    def runtime_problem(self) -> Optional[str]:
        """Why no device bundle can run this target's artifacts, or ``None`` when one can."""
        if self.arch not in RUNTIME_ARCHES:
            return (f"apache-tvm publishes runtime wheels for {', '.join(RUNTIME_ARCHES)} only "
                    f"(nothing to build one from for 32-bit ARM); run a 64-bit OS on the device "
                    f"and compile for an aarch64 target")
        sm = str(self.tvm_target.get("arch", "")) if self.device == "cuda" else ""
        digits = sm[3:] if sm.startswith("sm_") else ""  # str.removeprefix: Python 3.9
        if digits.isdigit() and (int(digits[:-1]), int(digits[-1])) < CUDA_MIN_COMPUTE_CAPABILITY:
            need = ".".join(map(str, CUDA_MIN_COMPUTE_CAPABILITY))
            return (f"the bundle's CUDA runtime is CUDA {CUDA_RUNTIME_MAJOR} (what apache-tvm's "
                    f"wheels link), which runs on compute capability {need} and newer; "
                    f"{self.name} is {sm}: compile for the device's CPU instead "
                    f"(a TargetPlatform without an accelerator)")
        return None


def _llvm(mtriple: str, mcpu: str, mattr: tuple = ()) -> dict:
    t: dict = {"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu}
    if mattr:
        t["mattr"] = list(mattr)
    if mtriple.endswith("gnueabihf"):
        t["mfloat-abi"] = "hard"  # Debian armhf links only hard-float objects
    return t


def _cuda(sm: str, host: dict) -> dict:
    return {"kind": "cuda", "arch": sm, "host": host}


_X86 = "x86_64-linux-gnu"
_A64 = "aarch64-linux-gnu"
_A32 = "armv7l-linux-gnueabihf"
_NEON = ("+neon",)


def _cpu(name, desc, arch, tvm_target, family=None) -> Target:
    cc = {"x86_64": None, "aarch64": AARCH64_CC, "armv7l": ARMHF_CC}[arch]
    return Target(name, desc, "cpu", arch, MappingProxyType(tvm_target), cc, family)


def _gpu(name, desc, arch, tvm_target, family=None) -> Target:
    cc = {"x86_64": None, "aarch64": AARCH64_CC}[arch]
    return Target(name, desc, "cuda", arch, MappingProxyType(tvm_target), cc, family)


_JETSON_HOST = _llvm(_A64, "cortex-a57")

_DEVICES = [
    # Edge devices: ARM
    _cpu("rasp3b", "Raspberry Pi 3 Model B (32-bit OS)", "armv7l", _llvm(_A32, "cortex-a53", _NEON)),
    _cpu("rasp4b", "Raspberry Pi 4 Model B (64-bit OS)", "aarch64", _llvm(_A64, "cortex-a72")),
    _cpu("imx8qm", "NXP i.MX 8QuadMax", "aarch64", _llvm(_A64, "cortex-a53")),
    _cpu("imx8mplus", "NXP i.MX 8M Plus", "aarch64", _llvm(_A64, "cortex-a53")),
    _cpu("rk3399", "Rockchip RK3399", "aarch64", _llvm(_A64, "cortex-a72")),
    _cpu("rk3288", "Rockchip RK3288", "armv7l", _llvm(_A32, "cortex-a17", _NEON)),
    _cpu("jacinto_tda4vm", "TI Jacinto TDA4VM (ARM cores)", "aarch64", _llvm(_A64, "cortex-a72")),
    _cpu("sitara_am57x", "TI Sitara AM57x (ARM cores)", "armv7l", _llvm(_A32, "cortex-a15", _NEON)),
    _cpu("aisage", "AISage (ARM cores)", "aarch64", _llvm(_A64, "cortex-a53")),
    # Edge devices: NVIDIA Jetson (CUDA kernels, AArch64 host code)
    _gpu("jetson_tx1", "NVIDIA Jetson TX1", "aarch64", _cuda("sm_53", _JETSON_HOST)),
    _gpu("jetson_tx2", "NVIDIA Jetson TX2", "aarch64", _cuda("sm_62", _JETSON_HOST)),
    _gpu("jetson_nano", "NVIDIA Jetson Nano", "aarch64", _cuda("sm_53", _JETSON_HOST)),
    _gpu("jetson_xavier", "NVIDIA Jetson AGX Xavier", "aarch64",
         _cuda("sm_72", _llvm(_A64, "carmel"))),
    # Edge devices: x86
    _cpu("deeplens", "AWS DeepLens (CPU)", "x86_64", _llvm(_X86, "broadwell")),
    _cpu("sbe_c", "AWS Snowball Edge compute", "x86_64", _llvm(_X86, "broadwell")),
    _cpu("lambda", "AWS Lambda (x86_64)", "x86_64", _llvm(_X86, "haswell")),
    # SageMaker hosting instances
    _cpu("ml_c4", "SageMaker ml.c4 (Haswell)", "x86_64", _llvm(_X86, "haswell"), "ml.c4"),
    _cpu("ml_c5", "SageMaker ml.c5 (Skylake-SP)", "x86_64", _llvm(_X86, "skylake-avx512"), "ml.c5"),
    _cpu("ml_m4", "SageMaker ml.m4 (Broadwell)", "x86_64", _llvm(_X86, "broadwell"), "ml.m4"),
    _cpu("ml_m5", "SageMaker ml.m5 (Skylake-SP)", "x86_64", _llvm(_X86, "skylake-avx512"), "ml.m5"),
    _cpu("ml_c6g", "SageMaker ml.c6g (Graviton2)", "aarch64", _llvm(_A64, "neoverse-n1"), "ml.c6g"),
    _cpu("ml_m6g", "SageMaker ml.m6g (Graviton2)", "aarch64", _llvm(_A64, "neoverse-n1"), "ml.m6g"),
    _gpu("ml_p2", "SageMaker ml.p2 (K80)", "x86_64", _cuda("sm_37", _llvm(_X86, "broadwell")), "ml.p2"),
    _gpu("ml_p3", "SageMaker ml.p3 (V100)", "x86_64", _cuda("sm_70", _llvm(_X86, "broadwell")), "ml.p3"),
    _gpu("ml_g4dn", "SageMaker ml.g4dn (T4)", "x86_64",
         _cuda("sm_75", _llvm(_X86, "cascadelake")), "ml.g4dn"),
]

#: Every supported ``TargetDevice`` by Neo's name.
TARGET_DEVICES: Mapping[str, Target] = MappingProxyType({t.name: t for t in _DEVICES})

#: Neo target devices this project cannot compile for, and why.
UNSUPPORTED_DEVICES: Mapping[str, str] = MappingProxyType({
    "coreml": "Core ML models are compiled by Apple's toolchain, not TVM",
    "ml_inf1": "Inferentia needs the AWS Neuron compiler",
    "ml_inf2": "Inferentia needs the AWS Neuron compiler",
    "ml_trn1": "Trainium needs the AWS Neuron compiler",
    "ml_eia2": "Elastic Inference has reached end of life",
    "qcs605": "Qualcomm QCS605 targets Android and needs the Android NDK",
    "qcs603": "Qualcomm QCS603 targets Android and needs the Android NDK",
    "amba_cv2": "Ambarella CVflow needs Ambarella's toolchain",
    "amba_cv22": "Ambarella CVflow needs Ambarella's toolchain",
    "amba_cv25": "Ambarella CVflow needs Ambarella's toolchain",
    "x86_win32": "Windows libraries need a Windows linker",
    "x86_win64": "Windows libraries need a Windows linker",
})

# TargetPlatform values, as CreateCompilationJob spells them.
PLATFORM_OS = ("LINUX", "ANDROID")
PLATFORM_ARCH = ("X86_64", "X86", "ARM64", "ARM_EABI", "ARM_EABIHF")
PLATFORM_ACCELERATOR = ("INTEL_GRAPHICS", "MALI", "NVIDIA", "NNA")

# NVIDIA compiler options Neo requires with an NVIDIA TargetPlatform.
NVIDIA_COMPILER_OPTIONS = ("gpu-code", "trt-ver", "cuda-ver")

_SUPPORTED_PLATFORMS = {
    ("LINUX", "X86_64", None): ("x86_64", _llvm(_X86, "x86-64")),
    ("LINUX", "ARM64", None): ("aarch64", _llvm(_A64, "generic")),
    ("LINUX", "ARM_EABIHF", None): ("armv7l", _llvm(_A32, "generic", _NEON)),
    ("LINUX", "ARM64", "NVIDIA"): ("aarch64", None),
    ("LINUX", "X86_64", "NVIDIA"): ("x86_64", None),
}


def supported_names() -> list:
    """Every name :func:`resolve` accepts, sorted, ``host`` first."""
    return ["host"] + sorted(TARGET_DEVICES)


def host_arch() -> str:
    m = _platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64", "armv8l": "armv7l"}.get(m, m)


def host_target() -> Target:
    """The machine the compiler runs on, tuned for its own CPU.

    ``mcpu`` is left to TVM's ``llvm -mcpu`` host detection at compile time, so the
    table stays pure data: the compiler fills it in (see ``compiler._tvm_target``).
    """
    arch = host_arch()
    triple = {"x86_64": _X86, "aarch64": _A64, "armv7l": _A32}.get(arch)
    if triple is None:
        raise TargetError(f"target 'host' is not supported on a {arch!r} machine; "
                          "supported hosts are x86_64, aarch64 and armv7l")
    return Target("host", f"this machine ({arch})", "cpu", arch,
                  MappingProxyType({"kind": "llvm", "mtriple": triple, "mcpu": "native"}))


def resolve(name: str) -> Target:
    """The :class:`Target` for a Neo device name or ``host``.

    Raises
    ------
    TargetError
        For an unknown or unsupported name; the message lists what is supported.
    """
    if not isinstance(name, str):
        raise TargetError(f"target must be a string; got {name!r}")
    key = name.strip().lower()
    if key == "host":
        return host_target()
    if key in TARGET_DEVICES:
        return TARGET_DEVICES[key]
    allowed = ", ".join(supported_names())
    if key in UNSUPPORTED_DEVICES:
        raise TargetError(f"target {name!r} is not supported: {UNSUPPORTED_DEVICES[key]}; "
                          f"supported targets are {allowed}")
    raise TargetError(f"unknown target {name!r}; supported targets are {allowed}")


def resolve_platform(os: str, arch: str, accelerator: Optional[str] = None,
                     compiler_options: Optional[Mapping[str, Any]] = None) -> Target:
    """The :class:`Target` for a Neo ``TargetPlatform``.

    NVIDIA accelerators need ``gpu-code``, ``trt-ver`` and ``cuda-ver`` in
    ``compiler_options`` (as Neo does); ``gpu-code`` (``sm_72``) picks the CUDA arch.
    """
    validate_platform(os, arch, accelerator, compiler_options)
    key = (os, arch, accelerator)
    if key not in _SUPPORTED_PLATFORMS:
        allowed = "; ".join(
            "/".join(p for p in k if p) for k in _SUPPORTED_PLATFORMS)
        raise TargetError(f"target platform {'/'.join(p for p in key if p)} is not supported "
                          f"by the local compiler; supported platforms are {allowed}")
    m_arch, tvm_target = _SUPPORTED_PLATFORMS[key]
    name = f"{os}_{arch}".lower() + (f"_{accelerator.lower()}" if accelerator else "")
    if accelerator == "NVIDIA":
        host = _llvm(_A64, "generic") if m_arch == "aarch64" else _llvm(_X86, "x86-64")
        tvm_target = _cuda(str(compiler_options["gpu-code"]), host)
        return _gpu(name, f"{os}/{arch}/{accelerator}", m_arch, tvm_target)
    return _cpu(name, f"{os}/{arch}", m_arch, tvm_target)


def validate_platform(os: str, arch: str, accelerator: Optional[str] = None,
                      compiler_options: Optional[Mapping[str, Any]] = None) -> None:
    """Check a TargetPlatform the way CreateCompilationJob does; raise :class:`TargetError`."""
    if os not in PLATFORM_OS:
        raise TargetError(f"target platform os must be one of {', '.join(PLATFORM_OS)}; got {os!r}")
    if arch not in PLATFORM_ARCH:
        raise TargetError(
            f"target platform arch must be one of {', '.join(PLATFORM_ARCH)}; got {arch!r}")
    if accelerator is not None and accelerator not in PLATFORM_ACCELERATOR:
        raise TargetError(f"target platform accelerator must be one of "
                          f"{', '.join(PLATFORM_ACCELERATOR)}; got {accelerator!r}")
    opts = dict(compiler_options or {})
    if accelerator == "NVIDIA":
        missing = [k for k in NVIDIA_COMPILER_OPTIONS if k not in opts]
        if missing:
            raise TargetError(f"an NVIDIA target platform needs compiler options "
                              f"{', '.join(NVIDIA_COMPILER_OPTIONS)}; missing {', '.join(missing)}")
        gpu_code = str(opts["gpu-code"])
        if not (gpu_code.startswith("sm_") and gpu_code[3:].isdigit()):
            raise TargetError(f"compiler option gpu-code must look like 'sm_72'; got {gpu_code!r}")
    if os == "ANDROID" and "ANDROID_PLATFORM" not in opts:
        raise TargetError("an ANDROID target platform needs the compiler option ANDROID_PLATFORM")


# ---------------------------------------------------------------------------------------
# Frameworks


@dataclass(frozen=True)
class FrameworkSpec:
    """A model framework as Neo names it.

    ``local`` says whether the local compiler takes it directly; ``takes_version``
    whether CreateCompilationJob accepts a ``FrameworkVersion`` for it;
    ``needs_shapes`` whether a ``DataInputConfig`` of input shapes is required and
    ``nchw`` whether those shapes are image-like NCHW.
    """

    name: str
    local: bool
    takes_version: bool
    needs_shapes: bool
    nchw: bool
    versions: tuple = field(default=())
    export_hint: str = ""


FRAMEWORKS: Mapping[str, FrameworkSpec] = MappingProxyType({
    "ONNX": FrameworkSpec("ONNX", True, False, True, True),
    "XGBOOST": FrameworkSpec("XGBOOST", True, False, False, False),
    "PYTORCH": FrameworkSpec("PYTORCH", True, True, True, True,
                             versions=("1.4", "1.5", "1.6", "1.7", "1.8", "1.12", "1.13", "2.0")),
    # TVM has a TFLite frontend, but it needs the tflite schema package and a TFLite
    # model to test with, which only TensorFlow writes: ONNX is the supported route.
    "TFLITE": FrameworkSpec(
        "TFLITE", False, True, True, False, versions=("1.15.3", "2.4"),
        export_hint="export it to ONNX with tf2onnx "
                    "(python -m tf2onnx.convert --tflite model.tflite --output model.onnx)"),
    "TENSORFLOW": FrameworkSpec(
        "TENSORFLOW", False, True, True, False, versions=("1.15", "2.4", "2.5", "2.6"),
        export_hint="export it to ONNX with tf2onnx "
                    "(python -m tf2onnx.convert --saved-model DIR --output model.onnx)"),
    "KERAS": FrameworkSpec(
        "KERAS", False, False, True, True,
        export_hint="export it to ONNX with tf2onnx (tf2onnx.convert.from_keras(model))"),
    "MXNET": FrameworkSpec(
        "MXNET", False, True, True, True, versions=("1.8",),
        export_hint="export it to ONNX with mxnet.onnx.export_model(sym, params, ...)"),
    "DARKNET": FrameworkSpec(
        "DARKNET", False, False, True, True,
        export_hint="convert it to ONNX (e.g. through PyTorch) before compiling"),
    "SKLEARN": FrameworkSpec(
        "SKLEARN", False, False, True, False,
        export_hint="export it to ONNX with skl2onnx.to_onnx(model, X[:1])"),
})


def framework(name: str) -> FrameworkSpec:
    """The :class:`FrameworkSpec` for a Neo framework name (case-insensitive)."""
    key = str(name).strip().upper()
    if key not in FRAMEWORKS:
        raise TargetError(f"framework must be one of {', '.join(FRAMEWORKS)}; got {name!r}")
    return FRAMEWORKS[key]
