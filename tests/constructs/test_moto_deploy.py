"""Deploy what moto's CloudFormation implements (bucket, key, roles, Lambdas, log groups,
the waiter state machine) and check the resources through boto3.

The custom resources (the jobs themselves) are left out: moto would invoke their provider
in Docker; their handlers are tested in tests/lambdas/test_sagemaker_job.py. moto skips
bucket policies.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import aws_cdk as cdk
import boto3
import pytest
from moto import mock_aws

from checks import synth_checked
from neo_edge import AlgorithmImage, ModelArtifactBucket, NeoCompilationJob, TrainingJob

pytestmark = pytest.mark.filterwarnings(
    "ignore:Tried to parse AWS..S3..BucketPolicy")

REGION = "us-east-1"
ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def assembly(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = cdk.App(outdir=str(outdir), analytics_reporting=False)
    stack = cdk.Stack(app, "NeoEdgeMoto", synthesizer=cdk.DefaultStackSynthesizer(
        generate_bootstrap_version_rule=False))
    models = ModelArtifactBucket(stack, "Models")
    train = TrainingJob(stack, "Train", bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                        input_channels={"train": "data/train/"})
    NeoCompilationJob(stack, "Compile", bucket=models, model=train, framework="xgboost",
                      target="rasp4b")
    synth_checked(app, stack)
    return outdir, stack.stack_name


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def deployed(assembly):
    outdir, name = assembly
    full = json.loads((outdir / f"{name}.template.json").read_text())
    # moto would invoke the custom resources' provider in Docker: deploy the rest.
    deployable = json.loads(json.dumps(full))
    custom = {k for k, r in full["Resources"].items() if r["Type"].startswith("Custom::")}
    deployable["Resources"] = {k: r for k, r in full["Resources"].items() if k not in custom}
    for resource in deployable["Resources"].values():
        if "DependsOn" in resource:
            resource["DependsOn"] = [d for d in resource["DependsOn"] if d not in custom]
    template = json.dumps(deployable)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        assets = f"cdk-hnb659fds-assets-{ACCOUNT}-{REGION}"
        s3.create_bucket(Bucket=assets)
        manifest = json.loads((outdir / f"{name}.assets.json").read_text())
        for asset in manifest["files"].values():
            source = outdir / asset["source"]["path"]
            body = _zip(source) if source.is_dir() else source.read_bytes()
            for destination in asset["destinations"].values():
                if destination["objectKey"].endswith(".json"):
                    continue
                s3.put_object(Bucket=assets, Key=destination["objectKey"], Body=body)
        cfn = boto3.client("cloudformation", region_name=REGION)
        cfn.create_stack(StackName=name, TemplateBody=template,
                         Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
        resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
        # Resources moto skips (bucket policies) come back without ids.
        yield {r["LogicalResourceId"]: r for r in resources if "LogicalResourceId" in r}, full


def _physical(resources, prefix, type_):
    matches = [r["PhysicalResourceId"] for k, r in resources.items()
               if k.startswith(prefix) and r["ResourceType"] == type_]
    assert matches, f"no {type_} starting {prefix}: {sorted(resources)}"
    return matches[0]


def test_stack_is_created(deployed):
    _, _ = deployed
    status = boto3.client("cloudformation", region_name=REGION).describe_stacks(
        StackName="NeoEdgeMoto")["Stacks"][0]["StackStatus"]
    assert status == "CREATE_COMPLETE"


def test_model_bucket_is_encrypted_with_the_stacks_key(deployed):
    # moto's CloudFormation applies a bucket's encryption (not its versioning, public access
    # block or logging: those are asserted on the template in test_storage.py).
    resources, _ = deployed
    s3 = boto3.client("s3", region_name=REGION)
    [name] = [r["PhysicalResourceId"] for k, r in resources.items()
              if r["ResourceType"] == "AWS::S3::Bucket" and k.startswith("Models")
              and not k.startswith("ModelsAccessLogs")]
    rule = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"][0]
    default = rule["ApplyServerSideEncryptionByDefault"]
    assert default["SSEAlgorithm"] == "aws:kms"
    key_id = _physical(resources, "ModelsKey", "AWS::KMS::Key")
    assert default["KMSMasterKeyID"].endswith(key_id)


def test_kms_key_exists_and_rotates(deployed):
    resources, _ = deployed
    kms = boto3.client("kms", region_name=REGION)
    key_id = _physical(resources, "ModelsKey", "AWS::KMS::Key")
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True


def test_job_roles_are_assumed_by_sagemaker(deployed):
    resources, _ = deployed
    iam = boto3.client("iam", region_name=REGION)
    for prefix in ("TrainRole", "CompileRole"):
        role = iam.get_role(RoleName=_physical(resources, prefix, "AWS::IAM::Role"))["Role"]
        principals = [s["Principal"]["Service"]
                      for s in role["AssumeRolePolicyDocument"]["Statement"]]
        assert principals == ["sagemaker.amazonaws.com"]
        assert not iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]


def test_handler_functions_are_python_311_with_their_handlers(deployed):
    resources, _ = deployed
    lam = boto3.client("lambda", region_name=REGION)
    handlers = {}
    for logical, r in resources.items():
        if r["ResourceType"] == "AWS::Lambda::Function" and "SageMakerJobProvider" in logical:
            config = lam.get_function_configuration(FunctionName=r["PhysicalResourceId"])
            handlers[config["Handler"]] = config
    assert handlers["sagemaker_job.on_event"]["Runtime"] == "python3.11"
    assert handlers["sagemaker_job.is_complete"]["Runtime"] == "python3.11"
    assert handlers["sagemaker_job.on_event"]["Environment"]["Variables"][
        "POWERTOOLS_SERVICE_NAME"] == "sagemaker_job"


def test_handler_code_is_the_bundled_asset(deployed):
    resources, _ = deployed
    lam = boto3.client("lambda", region_name=REGION)
    on_event = next(r["PhysicalResourceId"] for k, r in resources.items()
                    if k.startswith("NeoEdgeSageMakerJobProviderOnEvent")
                    and r["ResourceType"] == "AWS::Lambda::Function")
    code = lam.get_function(FunctionName=on_event)["Code"]
    assert code["RepositoryType"] == "S3"


def test_log_groups_have_retention(deployed):
    resources, _ = deployed
    logs = boto3.client("logs", region_name=REGION)
    names = [r["PhysicalResourceId"] for r in resources.values()
             if r["ResourceType"] == "AWS::Logs::LogGroup"]
    assert names
    groups = {g["logGroupName"]: g for g in logs.describe_log_groups()["logGroups"]}
    for name in names:
        assert groups[name]["retentionInDays"] == 90


def test_waiter_state_machine_exists(deployed):
    resources, _ = deployed
    arn = _physical(resources, "NeoEdgeSageMakerJobProviderwaiterstatemachine",
                    "AWS::StepFunctions::StateMachine")
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert sfn.describe_state_machine(stateMachineArn=arn)["status"] == "ACTIVE"


def test_custom_resources_are_in_the_template_but_not_deployed(deployed):
    resources, template = deployed
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert {"Custom::SageMakerTrainingJob", "Custom::SageMakerCompilationJob"} <= kinds
    assert not [r for r in resources.values() if r["ResourceType"].startswith("Custom::")]
