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


def test_the_wheel_cuda_runtime_is_the_cuda_version_the_table_says():
    """``CUDA_RUNTIME_MAJOR`` is read from the pinned wheel itself: its
    libtvm_runtime_cuda.so must link that libcudart major version."""
    from neo_edge_runtime.runtime import CUDA_RUNTIME_LIBRARY, runtime_library_dirs

    lib = next(d / "libtvm_runtime_cuda.so" for d in runtime_library_dirs()
               if (d / "libtvm_runtime_cuda.so").exists())
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True,
                            check=True).stdout
    assert f"[{CUDA_RUNTIME_LIBRARY}]" in needed, needed


@pytest.mark.parametrize("name", ["jetson_tx1", "jetson_tx2", "jetson_nano", "jetson_xavier",
                                  "ml_p2", "ml_p3"])
def test_gpus_older_than_the_cuda_runtime_supports_are_named_with_the_reason(name):
    problem = targets.resolve(name).runtime_problem
    assert problem and "compute capability 7.5 and newer" in problem and "CUDA 13" in problem


@pytest.mark.parametrize("name,bundle", [("ml_g4dn", "x86_64-cuda"), ("rasp4b", "aarch64"),
                                         ("ml_c5", "x86_64")])
def test_runtimes_that_exist_have_no_problem_and_name_their_bundle(name, bundle):
    t = targets.resolve(name)
    assert t.runtime_problem is None and t.runtime_bundle == bundle
    assert bundle in targets.RUNTIME_BUNDLES


def test_an_orin_platform_runs_on_the_aarch64_cuda_bundle():
    t = targets.resolve_platform("LINUX", "ARM64", "NVIDIA",
                                 {"gpu-code": "sm_87", "trt-ver": "10.3", "cuda-ver": "13.0"})
    assert t.runtime_problem is None and t.runtime_bundle == "aarch64-cuda"
