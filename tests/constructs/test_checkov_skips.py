"""checkov skips: the library's resources carry each skip with its reason in their metadata
(the format checkov reads: ``Metadata.checkov.skip[] = {id, comment}``); the user's own
resources in the same stack carry none; reserved concurrency is opt-in.

checkov itself runs over the reference app in tests/e2e/test_app_synth.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from neo_edge import _checkov
from neo_edge._lambda import bundled_function, keep_failed_invocations
from neo_edge.fleet import EdgeFleet
from neo_edge.retrain import RetrainPipeline
from neo_edge.storage import ModelArtifactBucket


def skips(resource: dict) -> dict:
    entries = resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    return {e["id"]: e["comment"] for e in entries}


def by_prefix(template: Template, kind: str, prefix: str) -> dict:
    (resource,) = [r for k, r in template.find_resources(kind).items() if k.startswith(prefix)]
    return resource


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Skips")
    models = ModelArtifactBucket(stack, "Models")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="cameras", fleet_provisioning=True)
    # Library functions (inside a library construct): one invoked asynchronously, with an
    # on-failure queue, and reserved concurrency.
    fn = bundled_function(models, "Async", "pipeline_trigger", reserved_concurrent_executions=3)
    keep_failed_invocations(fn, "Failed")
    # The user's own resources, beside the library's.
    mine = logs.LogGroup(stack, "MineLogs")
    lambda_.Function(stack, "Mine", runtime=lambda_.Runtime.PYTHON_3_11, handler="index.handler",
                     code=lambda_.Code.from_inline("def handler(e, c): return e"),
                     log_group=mine)
    s3.Bucket(stack, "MineBucket")
    return SimpleNamespace(stack=stack, fleet=fleet, models=models,
                           template=Template.from_stack(stack))


def test_the_users_own_resources_carry_no_skips(built):
    for kind, prefix in (("AWS::Lambda::Function", "Mine"), ("AWS::Logs::LogGroup", "MineLogs"),
                         ("AWS::S3::Bucket", "MineBucket"), ("AWS::IAM::Role", "MineServiceRole")):
        assert skips(by_prefix(built.template, kind, prefix)) == {}, prefix


def test_every_library_log_group_says_why_it_keeps_the_service_key(built):
    groups = {k: r for k, r in built.template.find_resources("AWS::Logs::LogGroup").items()
              if not k.startswith("Mine")}
    assert len(groups) == 2  # the function's, the provisioning hook's
    for group in groups.values():
        assert skips(group) == {"CKV_AWS_158": _checkov.LOG_GROUP_KEY_REASON}


def test_a_reserved_function_is_not_skipped_for_concurrency(built):
    fn = by_prefix(built.template, "AWS::Lambda::Function", "ModelsAsync")
    assert fn["Properties"]["ReservedConcurrentExecutions"] == 3
    assert skips(fn) == {"CKV_AWS_116": _checkov.ON_FAILURE_DESTINATION_REASON,
                         "CKV_AWS_117": _checkov.NO_VPC_REASON,
                         "CKV_AWS_173": _checkov.ENVIRONMENT_KEY_REASON}


def test_an_unreserved_synchronous_function_says_so_and_who_calls_it(built):
    hook = by_prefix(built.template, "AWS::Lambda::Function", "FleetProvisioningHook")
    assert "ReservedConcurrentExecutions" not in hook["Properties"]
    found = skips(hook)
    assert found["CKV_AWS_115"] == _checkov.RESERVED_CONCURRENCY_REASON
    assert found["CKV_AWS_116"].startswith("invoked synchronously, by AWS IoT fleet provisioning")


def test_the_failed_invocations_queue_is_skipped_for_its_sqs_managed_key(built):
    queue = by_prefix(built.template, "AWS::SQS::Queue", "ModelsFailed")
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    assert skips(queue) == {"CKV_AWS_27": _checkov.SQS_MANAGED_KEY_REASON}


def test_the_access_log_bucket_is_versioned_and_says_why_it_logs_nothing(built):
    bucket = by_prefix(built.template, "AWS::S3::Bucket", "ModelsAccessLogs")
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["Properties"]["LifecycleConfiguration"]["Rules"] == [
        {"ExpirationInDays": 365, "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
         "Status": "Enabled"}]
    assert list(skips(bucket)) == ["CKV_AWS_18"]


def test_a_resources_own_skip_wins_over_its_kinds_rule():
    app = cdk.App()
    stack = cdk.Stack(app, "Own")
    models = ModelArtifactBucket(stack, "Models")
    group = logs.LogGroup(models, "Extra")
    _checkov.skip(group, "CKV_AWS_158", "kept for this test")
    (resource,) = [r for k, r in Template.from_stack(stack).find_resources(
        "AWS::Logs::LogGroup").items() if k.startswith("ModelsExtra")]
    assert skips(resource) == {"CKV_AWS_158": "kept for this test"}


@pytest.mark.parametrize(("check_id", "reason", "message"), [
    ("AWS_115", "why", r"^check_id must be a checkov check id like CKV_AWS_115; got 'AWS_115'$"),
    ("CKV_AWS_115", " ", r"^reason must be one non-empty line; got ' '$"),
    ("CKV_AWS_115", "two\nlines", r"^reason must be one non-empty line; got 'two\\nlines'$"),
])
def test_fails_when_a_skip_is_malformed(check_id, reason, message):
    stack = cdk.Stack(cdk.App(), "Bad")
    group = logs.LogGroup(stack, "Group")
    with pytest.raises(ValueError, match=message):
        _checkov.skip(group, check_id, reason)


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_fails_when_a_reservation_is_not_a_positive_count(value):
    from neo_edge._lambda import check_reserved_concurrency

    with pytest.raises(ValueError, match=r"^results_reserved must be a whole number of at least 1 "
                                         r"\(0 would throttle every invocation\); "
                                         rf"got {value!r}$"):
        check_reserved_concurrency("results_reserved", value)
    check_reserved_concurrency("results_reserved", 1)
    check_reserved_concurrency("results_reserved", None)


def test_the_retraining_trigger_reserves_concurrency_only_when_asked(tmp_path):
    from test_retrain import base_stack  # the stack tests/constructs/test_retrain.py builds

    parts = base_stack(tmp_path)
    kwargs = dict(training_job=parts.training, compilation=parts.compilation,
                  component=parts.component, fleet=parts.fleet)
    reserved = RetrainPipeline(parts.stack, "Reserved", trigger_reserved_concurrent_executions=2,
                               **kwargs)
    unreserved = RetrainPipeline(parts.stack, "Unreserved", **kwargs)
    rule = _checkov.KIND_RULES["AWS::Lambda::Function"]["CKV_AWS_115"]
    reserved_cfn = reserved.trigger_function.node.default_child
    assert reserved_cfn.reserved_concurrent_executions == 2 and rule(reserved_cfn) is None
    assert rule(unreserved.trigger_function.node.default_child) == \
        _checkov.RESERVED_CONCURRENCY_REASON
    with pytest.raises(ValueError, match=r"^trigger_reserved_concurrent_executions must be a whole "
                                         r"number of at least 1"):
        RetrainPipeline(parts.stack, "Zero", trigger_reserved_concurrent_executions=0, **kwargs)
