"""TrainingJob: a deploy-time SageMaker training job through the Provider framework."""

from __future__ import annotations

import json
import re

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk.assertions import Match

from checks import synth_checked
from neo_edge import AlgorithmImage, InstanceType, ModelArtifactBucket, TrainingJob
from neo_edge._sagemaker_job import SageMakerJobProvider


def _request(template, logical_prefix="Train"):
    resources = template.find_resources("Custom::SageMakerTrainingJob")
    [(_, resource)] = [(k, v) for k, v in resources.items() if k.startswith(logical_prefix)]
    return resource


def _flat(value) -> str:
    """The Request property (Fn::Join) with its tokens replaced by '<token>'."""
    if isinstance(value, str):
        return value
    parts = value["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else "<token>" for p in parts)


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Training")
    models = ModelArtifactBucket(stack, "Models")
    job = TrainingJob(stack, "Train", bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                      input_channels={"train": "data/train/", "validation": "data/validation/"},
                      content_type="text/csv",
                      hyperparameters={"num_round": 50, "objective": "binary:logistic"},
                      instance_type=InstanceType.ML_M5_2XLARGE, use_spot_instances=True,
                      max_runtime=cdk.Duration.minutes(30), max_wait=cdk.Duration.minutes(40))
    return synth_checked(app, stack), job, stack


def test_one_custom_resource_per_job(built):
    template, _, _ = built
    template.resource_count_is("Custom::SageMakerTrainingJob", 1)
    template.has_resource_properties("Custom::SageMakerTrainingJob", {
        "Kind": "training", "JobNamePrefix": Match.string_like_regexp(r"^Training-[0-9a-f]{4}-"
                                                                      r"Train-[0-9a-f]{6}$")})


def test_request_carries_the_training_inputs(built):
    template, _, _ = built
    request = json.loads(_flat(_request(template)["Properties"]["Request"])
                         .replace("<token>", "T"))
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": "T.dkr.ecr.T.T/sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"}
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train", "validation"]
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == \
        "s3://T/data/train/"
    assert request["InputDataConfig"][0]["ContentType"] == "text/csv"
    assert request["HyperParameters"] == {"num_round": "50", "objective": "binary:logistic"}
    assert request["ResourceConfig"] == {"InstanceType": "ml.m5.2xlarge", "InstanceCount": 1,
                                         "VolumeSizeInGB": 30, "VolumeKmsKeyId": "T"}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800,
                                            "MaxWaitTimeInSeconds": 2400}
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {"S3Uri": "s3://T/checkpoints/Train"}
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://T/training/Train",
                                           "KmsKeyId": "T"}


def test_builtin_image_resolves_per_region_through_a_mapping(built):
    template, _, _ = built
    mappings = template.to_json()["Mappings"]["NeoEdgeSageMakerAlgorithmAccounts"]
    assert mappings["us-west-2"] == {"account": "246618743249"}


def test_provider_polls_with_a_waiter_and_logs_everything(built):
    template, _, _ = built
    template.resource_count_is("AWS::StepFunctions::StateMachine", 1)
    template.has_resource_properties("AWS::StepFunctions::StateMachine", {
        "LoggingConfiguration": Match.object_like({"Level": "ALL"})})
    # on_event + is_complete handlers, the framework's three functions
    template.resource_count_is("AWS::Lambda::Function", 5)
    template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "sagemaker_job.on_event", "Runtime": "python3.11",
        "TracingConfig": {"Mode": "Active"}})
    template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "sagemaker_job.is_complete"})


def test_handler_may_touch_only_this_stacks_jobs(built):
    template, _, stack = built
    policies = template.find_resources("AWS::IAM::Policy")
    on_event = next(p for k, p in policies.items() if "OnEventRole" in k)
    text = json.dumps(on_event)
    assert "sagemaker:CreateTrainingJob" in text
    assert re.search(r"training-job/Training-[0-9a-f]{4}-\*", text)
    assert "iam:PassRole" in text and "sagemaker.amazonaws.com" in text


def test_job_role_reads_inputs_and_writes_output_prefix_only(built):
    template, _, _ = built
    policies = template.find_resources("AWS::IAM::Policy")
    role_policy = next(p for k, p in policies.items() if k.startswith("TrainRoleDefaultPolicy"))
    statements = role_policy["Properties"]["PolicyDocument"]["Statement"]
    gets = [json.dumps(s["Resource"]) for s in statements if s["Action"] == "s3:GetObject"]
    puts = [json.dumps(s["Resource"]) for s in statements
            if s["Action"] == ["s3:PutObject", "s3:AbortMultipartUpload"]]
    assert any("/data/train/*" in g for g in gets) and any("/data/validation/*" in g for g in gets)
    assert any("/training/Train/*" in p for p in puts)
    assert any("/checkpoints/Train/*" in p for p in puts)
    assert not any("*" == s["Resource"] for s in statements)


def test_job_role_is_assumed_by_sagemaker_without_managed_policies(built):
    template, _, _ = built
    template.has_resource_properties("AWS::IAM::Role", {
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Principal": {"Service": "sagemaker.amazonaws.com"}})]},
        "Policies": [Match.object_like({"PolicyName": "Logs"})]})
    for role in template.find_resources("AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]


def test_job_waits_for_its_role_policy(built):
    template, _, _ = built
    depends = _request(template).get("DependsOn", [])
    assert any(d.startswith("TrainRoleDefaultPolicy") for d in depends)


def test_exposes_job_name_and_model_uri(built):
    _, job, stack = built
    assert stack.resolve(job.job_name)["Fn::GetAtt"][1] == "JobName"
    assert stack.resolve(job.model_data_uri)["Fn::GetAtt"][1] == "ModelArtifacts"


def test_two_jobs_share_one_provider():
    app = cdk.App()
    stack = cdk.Stack(app, "Two")
    models = ModelArtifactBucket(stack, "Models")
    for name in ("A", "B"):
        TrainingJob(stack, name, bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                    input_channels={"train": "data/"})
    template = synth_checked(app, stack)
    template.resource_count_is("Custom::SageMakerTrainingJob", 2)
    template.resource_count_is("AWS::StepFunctions::StateMachine", 1)


def test_ecr_image_and_vpc():
    app = cdk.App()
    stack = cdk.Stack(app, "Ecr")
    models = ModelArtifactBucket(stack, "Models")
    repo = ecr.Repository(stack, "Repo", image_scan_on_push=True)
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    cdk.Validations.of(vpc).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-VPC7", reason="test VPC, no flow logs needed"))
    TrainingJob(stack, "Train", bucket=models,
                algorithm_image=AlgorithmImage.from_ecr_repository(repo, "v1"),
                input_channels={"train": "data/"}, vpc=vpc, run_id="2")
    template = synth_checked(app, stack)
    template.has_resource_properties("Custom::SageMakerTrainingJob", {"RunId": "2"})
    request = _flat(_request(template)["Properties"]["Request"])
    assert '"VpcConfig":{"SecurityGroupIds":["<token>"],"Subnets":["<token>","<token>"]}' in request
    assert ":v1" in request
    template.resource_count_is("AWS::EC2::SecurityGroup", 1)


def _job(**overrides):
    stack = cdk.Stack(cdk.App(), "Bad")
    models = ModelArtifactBucket(stack, "Models")
    props = dict(bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                 input_channels={"train": "data/"})
    props.update(overrides)
    return TrainingJob(stack, "Train", **props)


def test_fails_when_max_runtime_exceeds_what_cloudformation_waits():
    with pytest.raises(ValueError, match=r"max_runtime must be between 1 second and 50 minutes "
                                         r"for a deploy-time job \(CloudFormation waits at most "
                                         r"one hour .*; got 7200 seconds"):
        _job(max_runtime=cdk.Duration.hours(2))


def test_fails_when_max_wait_is_shorter_than_max_runtime():
    with pytest.raises(ValueError, match=r"max_wait must be at least max_runtime \(2700 "
                                         r"seconds\); got 600 seconds"):
        _job(use_spot_instances=True, max_wait=cdk.Duration.minutes(10))


def test_fails_when_spot_settings_are_given_without_spot():
    with pytest.raises(ValueError, match="max_wait and checkpoint_prefix apply to managed spot "
                                         "training only"):
        _job(checkpoint_prefix="ckpt/")


def test_fails_when_there_are_no_input_channels():
    with pytest.raises(ValueError, match=r"input_channels must be a non-empty mapping of channel "
                                         r"name to key prefix, .*; got \{\}"):
        _job(input_channels={})


def test_fails_when_a_channel_prefix_is_an_s3_uri():
    with pytest.raises(ValueError, match=r"input_channels\['train'\] must be a key prefix in the "
                                         r"bucket, .*; got 's3://other/data/'"):
        _job(input_channels={"train": "s3://other/data/"})


def test_fails_when_instance_count_is_zero():
    with pytest.raises(ValueError, match="instance_count must be a positive integer; got 0"):
        _job(instance_count=0)


def test_fails_when_algorithm_image_is_a_string():
    with pytest.raises(ValueError, match=r"algorithm_image must be an AlgorithmImage \(e.g. "
                                         r"AlgorithmImage.xgboost\(\)\); got 'xgboost'"):
        _job(algorithm_image="xgboost")


def test_job_name_prefix_fits_the_handlers_limit_for_long_names():
    stack = cdk.Stack(cdk.App(), "A-Very-Long-Stack-Name-For-Production-Training-eu-west-1")
    models = ModelArtifactBucket(stack, "Models")
    job = TrainingJob(stack, "TrainTheModelOnTheFullDatasetWithEveryFeature", bucket=models,
                      algorithm_image=AlgorithmImage.xgboost(), input_channels={"train": "d/"})
    prefix = SageMakerJobProvider.of(stack).job_prefix(job)
    assert len(prefix) <= 50
    assert re.match(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$", prefix)
    assert prefix.startswith("A-Very-Long-St-")


def test_role_may_create_key_grants_only_for_aws_resources(built):
    template, _, _ = built
    statements = [s for p in template.find_resources("AWS::IAM::Policy").values()
                  for s in p["Properties"]["PolicyDocument"]["Statement"]]
    create_grant = [s for s in statements if "kms:CreateGrant" in json.dumps(s["Action"])]
    assert create_grant, "the training role may create grants on the bucket's key"
    for statement in create_grant:
        assert statement["Action"] == "kms:CreateGrant"
        assert statement["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
