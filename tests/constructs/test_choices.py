"""Framework, TargetDevice, TargetPlatform, CompilerOptions, DataInputConfig, InstanceType,
container images: the choices, backed by neo_edge_runtime.targets."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from neo_edge import (AlgorithmImage, CompilerOptions, Framework, InstanceType,
                      NeoInferenceImage, TargetDevice, TargetPlatform)
from neo_edge.choices import as_target, data_input_config
from neo_edge_runtime import targets


# --- one source of truth ---------------------------------------------------------------


def test_every_table_device_is_a_target_device():
    for name, target in targets.TARGET_DEVICES.items():
        device = getattr(TargetDevice, name.upper())
        assert device.name == name and device.target is target


def test_every_table_framework_is_a_framework():
    assert [getattr(Framework, n).name for n in targets.FRAMEWORKS] == list(targets.FRAMEWORKS)


def test_hosting_targets_carry_their_instance_family():
    assert TargetDevice.ML_C5.instance_family == "ml.c5"
    assert TargetDevice.of("ml_g4dn").instance_family == "ml.g4dn"
    assert TargetDevice.RASP4B.instance_family is None


def test_of_is_case_insensitive_and_equal_to_the_constant():
    assert TargetDevice.of("Jetson_Xavier") == TargetDevice.JETSON_XAVIER
    assert Framework.of("pytorch") == Framework.PYTORCH


def test_fails_when_target_device_is_unknown():
    with pytest.raises(ValueError, match=r"unknown target 'rasp5'; supported targets are .*rasp4b"):
        TargetDevice.of("rasp5")


def test_fails_when_target_device_is_one_the_project_cannot_compile_for():
    with pytest.raises(ValueError, match="target 'ml_inf1' is not supported: Inferentia needs "
                                         "the AWS Neuron compiler"):
        TargetDevice.of("ml_inf1")


def test_fails_when_target_device_is_host():
    with pytest.raises(ValueError, match=r"target_device must be one of .*; got 'host'"):
        TargetDevice.of("host")


def test_fails_when_target_is_neither_name_nor_choice():
    with pytest.raises(ValueError, match="target must be a TargetDevice, a TargetPlatform or a "
                                         "device name; got 42"):
        as_target(42)


def test_fails_when_framework_is_unknown():
    with pytest.raises(ValueError, match="framework must be one of ONNX, XGBOOST, .*; got 'caffe'"):
        Framework.of("caffe")


# --- framework versions ----------------------------------------------------------------


def test_framework_version_for_a_framework_that_takes_one():
    assert Framework.PYTORCH.check_version("1.8") == "1.8"


def test_fails_when_framework_version_is_given_for_a_framework_that_takes_none():
    with pytest.raises(ValueError, match="framework_version must not be given for framework "
                                         "ONNX, which takes none; got '1.0'"):
        Framework.ONNX.check_version("1.0")


def test_fails_when_framework_version_is_not_one_neo_knows():
    with pytest.raises(ValueError, match="framework_version for PYTORCH must be one of 1.4, .*; "
                                         "got '9.9'"):
        Framework.PYTORCH.check_version("9.9")


# --- platforms and compiler options ---------------------------------------------------


def test_platform_output_config():
    assert TargetPlatform.LINUX_ARM64_NVIDIA.output_config() == {
        "TargetPlatform": {"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NVIDIA"}}
    assert TargetPlatform.LINUX_X86_64.output_config() == {
        "TargetPlatform": {"Os": "LINUX", "Arch": "X86_64"}}


def test_nvidia_platform_resolves_with_nvidia_options():
    target = TargetPlatform.LINUX_ARM64_NVIDIA.resolve(
        CompilerOptions.nvidia(gpu_code="sm_72", trt_ver="8.4.0", cuda_ver="11.4"))
    assert target.device == "cuda" and dict(target.tvm_target)["arch"] == "sm_72"


def test_fails_when_nvidia_platform_has_no_gpu_options():
    with pytest.raises(ValueError, match="an NVIDIA target platform needs compiler options "
                                         "gpu-code, trt-ver, cuda-ver; missing trt-ver, cuda-ver"):
        TargetPlatform.LINUX_ARM64_NVIDIA.resolve(CompilerOptions({"gpu-code": "sm_72"}))


def test_fails_when_platform_arch_is_unknown():
    with pytest.raises(ValueError, match="target platform arch must be one of X86_64, X86, "
                                         "ARM64, ARM_EABI, ARM_EABIHF; got 'MIPS'"):
        TargetPlatform.of("LINUX", "MIPS")


def test_fails_when_platform_is_not_supported_by_the_compiler():
    with pytest.raises(ValueError, match="target platform ANDROID/ARM64 is not supported by the "
                                         "local compiler; supported platforms are"):
        TargetPlatform.of("ANDROID", "ARM64")


def test_fails_when_gpu_code_does_not_look_like_an_sm_arch():
    with pytest.raises(ValueError, match="compiler option gpu-code must look like 'sm_72'; "
                                         "got 'volta'"):
        CompilerOptions.nvidia(gpu_code="volta", trt_ver="8.4.0", cuda_ver="11.4")


def test_compiler_options_serialize_sorted():
    assert CompilerOptions({"trt-ver": "8", "gpu-code": "sm_72"}).to_json() == \
        '{"gpu-code": "sm_72", "trt-ver": "8"}'


def test_fails_when_compiler_options_is_not_a_mapping():
    with pytest.raises(ValueError, match=r"compiler_options must be a mapping of option name to "
                                         r"value; got \['--fast'\]"):
        CompilerOptions(["--fast"])


# --- DataInputConfig -------------------------------------------------------------------


def test_data_input_config_is_neo_json():
    assert json.loads(data_input_config(Framework.ONNX, {"input": [1, 3, 224, 224]})) == \
        {"input": [1, 3, 224, 224]}


def test_xgboost_takes_no_data_input_config():
    assert data_input_config(Framework.XGBOOST, None) is None


def test_non_image_shapes_are_accepted_for_onnx():
    assert json.loads(data_input_config(Framework.ONNX, {"x": [1, 10]})) == {"x": [1, 10]}


def test_channels_last_is_fine_for_tflite():
    assert data_input_config(Framework.TFLITE, {"x": [1, 224, 224, 3]})


def test_fails_when_xgboost_has_a_shape():
    with pytest.raises(ValueError, match=r"data_input_config must not be given for framework "
                                         r"XGBOOST, which takes no input shapes; got \{'x': \[1, 4\]\}"):
        data_input_config(Framework.XGBOOST, {"x": [1, 4]})


def test_fails_when_data_input_config_is_missing():
    with pytest.raises(ValueError, match=r"data_input_config is required for framework PYTORCH: "
                                         r"a mapping of input name to shape"):
        data_input_config(Framework.PYTORCH, None)


@pytest.mark.parametrize("bad", [[1, 3, 224, 224], "1,3,224,224", {}])
def test_fails_when_data_input_config_is_not_a_mapping(bad):
    with pytest.raises(ValueError, match=r"data_input_config must be a mapping of input name to "
                                         r"shape, e\.g\. \{'input': \[1, 3, 224, 224\]\}; got"):
        data_input_config(Framework.ONNX, bad)


@pytest.mark.parametrize("shape", [[1, 3, 0, 224], [1.0, 3], [], "1x3"])
def test_fails_when_a_shape_is_not_positive_integers(shape):
    with pytest.raises(ValueError, match=r"\(a list of positive integers\), .*; got 'input': "):
        data_input_config(Framework.ONNX, {"input": shape})


@pytest.mark.parametrize("framework", [Framework.ONNX, Framework.PYTORCH])
def test_fails_when_an_nchw_framework_gets_an_nhwc_shape(framework):
    with pytest.raises(ValueError, match=rf"data_input_config shape of 'input' looks "
                                         rf"channels-last \(NHWC\): \[1, 224, 224, 3\]; framework "
                                         rf"{framework.name} expects NCHW, e\.g\. \[1, 3, 224, 224\]"):
        data_input_config(framework, {"input": [1, 224, 224, 3]})


# --- instance types --------------------------------------------------------------------


def test_instance_type_constants_and_family():
    assert InstanceType.ML_C5_2XLARGE.name == "ml.c5.2xlarge"
    assert InstanceType.ML_G4DN_XLARGE.family == "ml.g4dn"
    assert InstanceType.of("ml.p3.2xlarge").family == "ml.p3"


@pytest.mark.parametrize("bad", ["c5.xlarge", "ml.c5", "ML.C5.XLARGE"])
def test_fails_when_instance_type_is_malformed(bad):
    with pytest.raises(ValueError, match=f"instance type must look like 'ml.<family>.<size>' "
                                         rf"\(e.g. ml.c5.xlarge\); got '{bad}'"):
        InstanceType.of(bad)


# --- images ----------------------------------------------------------------------------


def test_xgboost_image_is_resolved_per_region_through_a_mapping():
    stack = cdk.Stack(cdk.App(), "Agnostic")
    uri = AlgorithmImage.xgboost("1.7-1").bind(stack, None)
    resolved = json.dumps(stack.resolve(uri))
    assert "Fn::FindInMap" in resolved and "sagemaker-xgboost:1.7-1" in resolved
    mapping = Template.from_stack(stack).to_json()["Mappings"]["NeoEdgeSageMakerAlgorithmAccounts"]
    assert mapping["us-east-1"] == {"account": "683313688378"}
    assert mapping["eu-west-1"] == {"account": "141502667606"}


def test_xgboost_image_in_a_known_region_is_a_literal():
    stack = cdk.Stack(cdk.App(), "Env", env=cdk.Environment(region="eu-west-1",
                                                            account="111122223333"))
    uri = AlgorithmImage.xgboost().bind(stack, None)
    assert stack.resolve(uri) == {"Fn::Join": ["", [
        "141502667606.dkr.ecr.eu-west-1.", {"Ref": "AWS::URLSuffix"},
        "/sagemaker-xgboost:1.7-1"]]}


def test_fails_when_the_region_has_no_builtin_image():
    stack = cdk.Stack(cdk.App(), "Env", env=cdk.Environment(region="mars-north-1"))
    with pytest.raises(ValueError, match="sagemaker-xgboost images are not published in region "
                                         "'mars-north-1'; regions are af-south-1, "):
        AlgorithmImage.xgboost().bind(stack, None)


def test_fails_when_xgboost_version_is_unknown():
    with pytest.raises(ValueError, match="xgboost version must be one of 1.0-1, .*; got '2.0'"):
        AlgorithmImage.xgboost("2.0")


def test_neo_inference_image_for_pytorch_gpu():
    stack = cdk.Stack(cdk.App(), "Env", env=cdk.Environment(region="us-east-1"))
    uri = NeoInferenceImage.for_framework(Framework.PYTORCH, version="1.8", gpu=True).bind(stack)
    assert "785573368785.dkr.ecr.us-east-1." in json.dumps(stack.resolve(uri))
    assert "sagemaker-inference-pytorch:1.8-gpu-py3" in json.dumps(stack.resolve(uri))


def test_fails_when_framework_has_no_neo_inference_container():
    with pytest.raises(ValueError, match="framework ONNX has no Neo inference container; "
                                         "frameworks with one are PYTORCH, MXNET, TENSORFLOW, "
                                         "XGBOOST"):
        NeoInferenceImage.for_framework(Framework.ONNX)
