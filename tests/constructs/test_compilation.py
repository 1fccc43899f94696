"""NeoCompilationJob and NeoCompilationSet: Neo compilation at deploy time, per target."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match

from checks import synth_checked
from neo_edge import (AlgorithmImage, CompilerOptions, Framework, ModelArtifactBucket,
                      NeoCompilationJob, NeoCompilationSet, TargetDevice, TargetPlatform,
                      TrainingJob)

NVIDIA = CompilerOptions.nvidia(gpu_code="sm_72", trt_ver="8.4.0", cuda_ver="11.4")


def _requests(template) -> dict:
    out = {}
    for logical, resource in template.find_resources("Custom::SageMakerCompilationJob").items():
        value = resource["Properties"]["Request"]
        text = value if isinstance(value, str) else "".join(
            p if isinstance(p, str) else "T" for p in value["Fn::Join"][1])
        out[logical] = json.loads(text)
    return out


def _by_target(template) -> dict:
    result = {}
    for request in _requests(template).values():
        output = request["OutputConfig"]
        key = output.get("TargetDevice") or "/".join(output["TargetPlatform"].values())
        result[key] = request
    return result


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Compile")
    models = ModelArtifactBucket(stack, "Models")
    train = TrainingJob(stack, "Train", bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                        input_channels={"train": "data/train/"})
    jobs = NeoCompilationJob.for_targets(stack, "Xgb", bucket=models, model=train,
                                         framework=Framework.XGBOOST,
                                         targets=["rasp4b", "jetson_xavier", "ml_c5"])
    onnx = NeoCompilationJob(stack, "Onnx", bucket=models, model="models/resnet.tar.gz",
                             framework="onnx", data_input_config={"input": [1, 3, 224, 224]},
                             target=TargetPlatform.LINUX_ARM64_NVIDIA, compiler_options=NVIDIA)
    return synth_checked(app, stack), jobs, onnx, stack


def test_one_job_per_target(built):
    template, jobs, _, _ = built
    assert list(jobs) == ["rasp4b", "jetson_xavier", "ml_c5"]
    template.resource_count_is("Custom::SageMakerCompilationJob", 4)
    assert set(_by_target(template)) == {"rasp4b", "jetson_xavier", "ml_c5",
                                         "LINUX/ARM64/NVIDIA"}


def test_xgboost_job_reads_the_training_output(built):
    template, _, _, _ = built
    request = _by_target(template)["rasp4b"]
    assert request["InputConfig"] == {"S3Uri": "T", "Framework": "XGBOOST"}
    assert request["OutputConfig"] == {"S3OutputLocation": "s3://T/compiled/Xgb/rasp4b",
                                       "TargetDevice": "rasp4b", "KmsKeyId": "T"}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 900}


def test_model_uri_comes_from_the_training_job(built):
    template, _, _, _ = built
    [resource] = [r for k, r in template.find_resources("Custom::SageMakerCompilationJob").items()
                  if k.startswith("Xgbrasp4b")]
    parts = resource["Properties"]["Request"]["Fn::Join"][1]
    assert any(isinstance(p, dict) and p.get("Fn::GetAtt", [None, None])[1] == "ModelArtifacts"
               for p in parts)


def test_nvidia_platform_carries_its_compiler_options(built):
    template, _, _, _ = built
    request = _by_target(template)["LINUX/ARM64/NVIDIA"]
    assert json.loads(request["OutputConfig"]["CompilerOptions"]) == {
        "cuda-ver": "11.4", "gpu-code": "sm_72", "trt-ver": "8.4.0"}
    assert json.loads(request["InputConfig"]["DataInputConfig"]) == {"input": [1, 3, 224, 224]}
    assert request["InputConfig"]["Framework"] == "ONNX"
    assert request["InputConfig"]["S3Uri"] == "s3://T/models/resnet.tar.gz"


def test_set_shares_one_role(built):
    template, jobs, _, stack = built
    arns = {json.dumps(stack.resolve(job.role.role_arn)) for job in jobs.values()}
    assert len(arns) == 1
    template.has_resource_properties("AWS::IAM::Role", {
        "Description": Match.string_like_regexp("SageMaker Neo compilation jobs Compile/Xgb")})


def test_exposes_target_and_compiled_model_uri(built):
    _, jobs, onnx, stack = built
    assert jobs["ml_c5"].target == TargetDevice.ML_C5
    assert jobs["ml_c5"].target_spec.instance_family == "ml.c5"
    assert onnx.target_spec.device == "cuda"
    assert stack.resolve(jobs["rasp4b"].compiled_model_uri)["Fn::GetAtt"][1] == "ModelArtifacts"
    assert stack.resolve(onnx.inference_image)["Fn::GetAtt"][1] == "InferenceImage"


def test_compilation_role_may_read_the_model_and_write_its_prefix(built):
    template, _, _, _ = built
    policies = template.find_resources("AWS::IAM::Policy")
    policy = next(p for k, p in policies.items() if k.startswith("OnnxRoleDefaultPolicy"))
    text = json.dumps(policy)
    assert "/models/resnet.tar.gz*" in text and "/compiled/Onnx/*" in text


def _compile(**overrides):
    stack = cdk.Stack(cdk.App(), "Bad")
    models = ModelArtifactBucket(stack, "Models")
    props = dict(bucket=models, model="models/m.tar.gz", framework=Framework.ONNX,
                 data_input_config={"input": [1, 3, 224, 224]}, target="rasp4b")
    props.update(overrides)
    return NeoCompilationJob(stack, "Job", **props)


def test_fails_when_nvidia_platform_has_no_compiler_options():
    with pytest.raises(ValueError, match="an NVIDIA target platform needs compiler options "
                                         "gpu-code, trt-ver, cuda-ver; missing gpu-code, "
                                         "trt-ver, cuda-ver"):
        _compile(target=TargetPlatform.LINUX_X86_64_NVIDIA)


def test_fails_when_framework_version_is_given_for_onnx():
    with pytest.raises(ValueError, match="framework_version must not be given for framework "
                                         "ONNX, which takes none; got '1.12'"):
        _compile(framework_version="1.12")


def test_fails_when_xgboost_gets_a_shape():
    with pytest.raises(ValueError, match="data_input_config must not be given for framework "
                                         "XGBOOST"):
        _compile(framework="xgboost")


def test_fails_when_pytorch_shape_is_nhwc():
    with pytest.raises(ValueError, match=r"looks channels-last \(NHWC\): \[1, 224, 224, 3\]; "
                                         r"framework PYTORCH expects NCHW"):
        _compile(framework=Framework.PYTORCH, data_input_config={"x": [1, 224, 224, 3]})


def test_fails_when_data_input_config_is_a_list():
    with pytest.raises(ValueError, match="data_input_config must be a mapping of input name to "
                                         "shape"):
        _compile(data_input_config=[[1, 3, 224, 224]])


def test_fails_when_target_is_unknown():
    with pytest.raises(ValueError, match="unknown target 'rasp9'"):
        _compile(target="rasp9")


def test_fails_when_model_uri_is_not_literal():
    stack = cdk.Stack(cdk.App(), "Tok")
    models = ModelArtifactBucket(stack, "Models")
    with pytest.raises(ValueError, match=r"model must be a literal s3://bucket/key URI \(for a "
                                         r"bucket in this app, pass the key and the bucket\)"):
        NeoCompilationJob(stack, "Job", bucket=models, model=models.s3_uri("m.tar.gz"),
                          framework="xgboost", target="rasp4b")


def test_fails_when_max_runtime_is_too_long():
    with pytest.raises(ValueError, match="max_runtime must be between 1 second and 50 minutes"):
        _compile(max_runtime=cdk.Duration.hours(1))


def test_fails_when_targets_repeat():
    stack = cdk.Stack(cdk.App(), "Dup")
    models = ModelArtifactBucket(stack, "Models")
    with pytest.raises(ValueError, match="targets must not repeat a target; got rasp4b more "
                                         "than once"):
        NeoCompilationSet(stack, "Set", targets=["rasp4b", "RASP4B"], bucket=models,
                          model="m.tar.gz", framework="xgboost")


def test_fails_when_targets_is_a_single_name():
    stack = cdk.Stack(cdk.App(), "One")
    with pytest.raises(ValueError, match="targets must be a non-empty list of target names"):
        NeoCompilationSet(stack, "Set", targets="rasp4b", bucket=None, model="m",
                          framework="xgboost")


def test_literal_s3_uri_model():
    app = cdk.App()
    stack = cdk.Stack(app, "Literal")
    models = ModelArtifactBucket(stack, "Models")
    NeoCompilationJob(stack, "Job", bucket=models, model="s3://shared-models/zoo/m.tar.gz",
                      framework="xgboost", target="ml_m5", run_id="again")
    template = synth_checked(app, stack)
    [request] = _requests(template).values()
    assert request["InputConfig"]["S3Uri"] == "s3://shared-models/zoo/m.tar.gz"
    template.has_resource_properties("Custom::SageMakerCompilationJob", {"RunId": "again"})
    assert "arn:aws:s3:::shared-models/zoo/m.tar.gz*" in json.dumps(
        template.find_resources("AWS::IAM::Policy")).replace('", {"Ref": "AWS::Partition"}, "',
                                                             "aws")
