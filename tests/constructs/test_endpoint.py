"""CloudInferenceEndpoint: a Neo-compiled model on a SageMaker endpoint of the right family."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Match

from checks import synth_checked
from neo_edge import (CloudInferenceEndpoint, Framework, ModelArtifactBucket, NeoCompilationJob,
                      NeoInferenceImage)


def _compiled(stack, models, target="ml_c5"):
    return NeoCompilationJob(stack, f"Compile{target}", bucket=models, model="models/m.tar.gz",
                             framework="xgboost", target=target)


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Serve")
    models = ModelArtifactBucket(stack, "Models")
    endpoint = CloudInferenceEndpoint(stack, "Endpoint", model=_compiled(stack, models),
                                      data_capture=True, data_capture_sampling_percentage=20,
                                      max_capacity=4)
    invoker = iam.Role(stack, "Invoker", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    endpoint.grant_invoke(invoker)
    return synth_checked(app, stack), endpoint, stack


def test_model_serves_the_compiled_artifact_with_the_jobs_inference_image(built):
    template, _, _ = built
    template.has_resource_properties("AWS::SageMaker::Model", {"PrimaryContainer": {
        "Image": {"Fn::GetAtt": [Match.string_like_regexp("^Compilemlc5"), "InferenceImage"]},
        "ModelDataUrl": {"Fn::GetAtt": [Match.string_like_regexp("^Compilemlc5"),
                                        "ModelArtifacts"]}}})


def test_default_instance_type_is_of_the_target_family(built):
    template, endpoint, _ = built
    assert endpoint.instance_type.name == "ml.c5.xlarge"
    template.has_resource_properties("AWS::SageMaker::EndpointConfig", {
        "ProductionVariants": [Match.object_like({"InstanceType": "ml.c5.xlarge",
                                                  "InitialInstanceCount": 1,
                                                  "VariantName": "AllTraffic"})],
        "KmsKeyId": Match.any_value()})


def test_data_capture_is_encrypted_and_sampled(built):
    template, _, _ = built
    template.has_resource_properties("AWS::SageMaker::EndpointConfig", {"DataCaptureConfig": {
        "EnableCapture": True, "InitialSamplingPercentage": 20,
        "KmsKeyId": Match.any_value(), "CaptureOptions": Match.any_value(),
        "DestinationS3Uri": Match.any_value()}})


def test_endpoint_autoscales_on_invocations(built):
    template, _, _ = built
    template.resource_count_is("AWS::SageMaker::Endpoint", 1)
    template.has_resource_properties("AWS::ApplicationAutoScaling::ScalableTarget", {
        "MinCapacity": 1, "MaxCapacity": 4, "ServiceNamespace": "sagemaker",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"})
    template.has_resource_properties("AWS::ApplicationAutoScaling::ScalingPolicy", {
        "TargetTrackingScalingPolicyConfiguration": Match.object_like({
            "TargetValue": 100,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}})})


def test_grant_invoke_is_scoped_to_the_endpoint(built):
    template, _, _ = built
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": [
        {"Action": "sagemaker:InvokeEndpoint", "Effect": "Allow",
         "Resource": {"Ref": Match.string_like_regexp("^Endpoint")}}]}})


def test_metrics_name_the_endpoint(built):
    _, endpoint, stack = built
    metric = endpoint.metric_model_latency()
    assert metric.metric_name == "ModelLatency" and metric.namespace == "AWS/SageMaker"
    assert stack.resolve(metric.dimensions["VariantName"]) == "AllTraffic"


def test_nvme_family_gets_no_volume_key():
    app = cdk.App()
    stack = cdk.Stack(app, "Gpu")
    models = ModelArtifactBucket(stack, "Models")
    CloudInferenceEndpoint(stack, "Endpoint", model=_compiled(stack, models, "ml_g4dn"))
    template = synth_checked(app, stack)
    config = next(iter(template.find_resources("AWS::SageMaker::EndpointConfig").values()))
    assert "KmsKeyId" not in config["Properties"]
    assert config["Properties"]["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"


def test_model_by_key_uses_the_neo_container_for_the_framework():
    app = cdk.App()
    stack = cdk.Stack(app, "ByKey", env=cdk.Environment(region="eu-west-1"))
    models = ModelArtifactBucket(stack, "Models")
    CloudInferenceEndpoint(stack, "Endpoint", model="compiled/ml_m5/model.tar.gz",
                           bucket=models, target="ml_m5", framework=Framework.PYTORCH,
                           framework_version="1.8", instance_type="ml.m5.large")
    template = synth_checked(app, stack)
    template.has_resource_properties("AWS::SageMaker::Model", {"PrimaryContainer": {
        "Image": {"Fn::Join": ["", ["802834080501.dkr.ecr.eu-west-1.",
                                    {"Ref": "AWS::URLSuffix"},
                                    "/sagemaker-inference-pytorch:1.8-cpu-py3"]]},
        "ModelDataUrl": Match.any_value()}})


def _endpoint(**overrides):
    stack = cdk.Stack(cdk.App(), "Bad")
    models = ModelArtifactBucket(stack, "Models")
    props = dict(model=_compiled(stack, models, overrides.pop("target", "ml_c5")))
    props.update(overrides)
    return CloudInferenceEndpoint(stack, "Endpoint", **props)


def test_fails_when_instance_family_does_not_match_the_target():
    with pytest.raises(ValueError, match=r"instance_type ml.m5.xlarge does not match the "
                                         r"compilation target ml_c5; use an ml.c5.\* instance "
                                         r"type \(e.g. ml.c5.xlarge\)"):
        _endpoint(instance_type="ml.m5.xlarge")


def test_fails_when_the_target_is_an_edge_device():
    with pytest.raises(ValueError, match="model was compiled for rasp4b, which is no SageMaker "
                                         "hosting target; compile it for one of ml_c4, ml_c5, "):
        _endpoint(target="rasp4b")


def test_fails_when_max_capacity_is_below_min():
    with pytest.raises(ValueError, match=r"max_capacity must be at least min_capacity \(3\); "
                                         r"got 2"):
        _endpoint(min_capacity=3, max_capacity=2)


def test_fails_when_model_is_a_uri():
    with pytest.raises(ValueError, match="model must be a NeoCompilationJob or the key of a "
                                         "compiled model in bucket; got 's3://b/k'"):
        _endpoint(model="s3://b/k")


def test_fails_when_a_keyed_model_lacks_its_target():
    stack = cdk.Stack(cdk.App(), "NoTarget")
    models = ModelArtifactBucket(stack, "Models")
    with pytest.raises(ValueError, match="a model given by key needs bucket, target and "
                                         "framework"):
        CloudInferenceEndpoint(stack, "Endpoint", model="k.tar.gz", bucket=models,
                               framework="xgboost")


def test_fails_when_onnx_model_by_key_has_no_image():
    stack = cdk.Stack(cdk.App(), "Onnx")
    models = ModelArtifactBucket(stack, "Models")
    with pytest.raises(ValueError, match="framework ONNX has no Neo inference container"):
        CloudInferenceEndpoint(stack, "Endpoint", model="k.tar.gz", bucket=models,
                               target="ml_c5", framework="onnx")


def test_explicit_image_by_uri():
    stack = cdk.Stack(cdk.App(), "Uri")
    models = ModelArtifactBucket(stack, "Models")
    endpoint = CloudInferenceEndpoint(
        stack, "Endpoint", model="k.tar.gz", bucket=models, target="ml_c5",
        image=NeoInferenceImage.from_uri("123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1"))
    assert stack.resolve(endpoint.model.primary_container.image) == \
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1"
