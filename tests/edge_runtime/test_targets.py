"""The target table: Neo's names, pure data, clear errors."""

import subprocess
import sys

import pytest

from neo_edge_runtime import targets
from neo_edge_runtime.errors import TargetError

NEO_CPU_AND_NVIDIA = ["rasp3b", "rasp4b", "jetson_nano", "jetson_tx1", "jetson_tx2",
                      "jetson_xavier", "ml_c4", "ml_c5", "ml_m4", "ml_m5", "ml_c6g", "ml_m6g",
                      "ml_p2", "ml_p3", "ml_g4dn", "imx8qm", "rk3399", "rk3288", "lambda"]


def test_table_is_importable_without_tvm():
    code = ("import sys; import neo_edge_runtime.targets, neo_edge_runtime.artifact; "
            "assert 'tvm' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NEO_CPU_AND_NVIDIA)
def test_every_cpu_and_nvidia_device_resolves_to_a_valid_tvm_target(name):
    import tvm

    t = targets.resolve(name)
    built = tvm.target.Target(dict(t.tvm_target))
    assert built.kind.name == ("cuda" if t.device == "cuda" else "llvm")
    assert t.greengrass_platform["os"] == "linux"


def test_names_are_case_insensitive():
    assert targets.resolve("RASP4B") is targets.resolve("rasp4b")


def test_fails_when_target_is_unknown():
    with pytest.raises(TargetError, match=r"unknown target 'rasp5'; supported targets are host, "
                                          r"aisage, .*rasp4b"):
        targets.resolve("rasp5")


@pytest.mark.parametrize("name", ["coreml", "ml_inf1", "qcs605"])
def test_fails_when_target_is_unsupported(name):
    with pytest.raises(TargetError, match=rf"target '{name}' is not supported: .*; "
                                          "supported targets are host"):
        targets.resolve(name)


def test_instance_families_match_neo_names():
    assert targets.resolve("ml_c5").instance_family == "ml.c5"
    assert targets.resolve("rasp4b").instance_family is None


def test_platform_nvidia_needs_compiler_options():
    with pytest.raises(TargetError, match="needs compiler options gpu-code, trt-ver, cuda-ver; "
                                          "missing trt-ver, cuda-ver"):
        targets.resolve_platform("LINUX", "ARM64", "NVIDIA", {"gpu-code": "sm_72"})


def test_platform_resolves_to_cuda_with_the_gpu_code_arch():
    t = targets.resolve_platform("LINUX", "ARM64", "NVIDIA",
                                 {"gpu-code": "sm_72", "trt-ver": "8.5", "cuda-ver": "11.4"})
    assert t.device == "cuda" and t.tvm_target["arch"] == "sm_72" and t.arch == "aarch64"


def test_fails_when_platform_arch_is_unknown():
    with pytest.raises(TargetError, match="arch must be one of X86_64, X86, ARM64, ARM_EABI, "
                                          "ARM_EABIHF; got 'RISCV'"):
        targets.resolve_platform("LINUX", "RISCV")


def test_frameworks_say_how_to_export_what_the_compiler_cannot_read():
    assert "tf2onnx" in targets.framework("tensorflow").export_hint
    with pytest.raises(TargetError, match="framework must be one of ONNX, XGBOOST"):
        targets.framework("caffe")
