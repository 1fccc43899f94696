"""EdgeTelemetry: topic rule -> results Lambda + S3 archive, alerts, metrics, alarms, dashboard."""

from __future__ import annotations

import json
from types import SimpleNamespace

import aws_cdk as cdk
import pytest
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match

from aws_samples import COMPONENT_STATUS_EVENT, DEPLOYMENT_STATUS_EVENT
from checks import event_matches as matches, synth_checked
from neo_edge.fleet import EdgeFleet
from neo_edge.telemetry import METRICS_NAMESPACE, EdgeTelemetry


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Telemetry")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="cameras")
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    bucket = s3.Bucket.from_bucket_attributes(stack, "Results", bucket_name="results-bucket",
                                              encryption_key=key)
    deployment = SimpleNamespace(deployment_id="dep-123")
    telemetry = EdgeTelemetry(stack, "Telemetry", fleet=fleet, results_bucket=bucket,
                              model_names=["digits", "anomaly"], deployment=deployment,
                              low_confidence_threshold=0.6, anomaly_threshold=0.9)
    template = synth_checked(app, stack)
    return SimpleNamespace(template=template, telemetry=telemetry, stack=stack)


def test_rule_selects_results_and_errors_of_every_device(built):
    built.template.has_resource_properties("AWS::IoT::TopicRule", {"TopicRulePayload": Match.object_like({
        "Sql": "SELECT *, topic(2) AS device FROM 'neo-edge/+/+' "
               "WHERE topic(3) = 'results' OR topic(3) = 'errors'",
        "AwsIotSqlVersion": "2016-03-23", "RuleDisabled": False})})


def test_rule_feeds_the_processor_and_archives_in_s3(built):
    (rule,) = built.template.find_resources("AWS::IoT::TopicRule").values()
    actions = rule["Properties"]["TopicRulePayload"]["Actions"]
    (fn_id,) = [k for k in built.template.find_resources("AWS::Lambda::Function")
                if k.startswith("TelemetryResultsProcessor")]
    assert actions[0] == {"Lambda": {"FunctionArn": {"Fn::GetAtt": [fn_id, "Arn"]}}}
    assert actions[1]["S3"]["BucketName"] == "results-bucket"
    assert actions[1]["S3"]["Key"] == ('archive/device=${topic(2)}/date=${parse_time("yyyy-MM-dd", '
                                       'timestamp())}/${topic(3)}-${newuuid()}.json')
    assert "CloudwatchLogs" in rule["Properties"]["TopicRulePayload"]["ErrorAction"]


def test_only_the_rule_may_invoke_the_processor(built):
    (rule_id,) = built.template.find_resources("AWS::IoT::TopicRule")
    built.template.has_resource_properties("AWS::Lambda::Permission", {
        "Action": "lambda:InvokeFunction", "Principal": "iot.amazonaws.com",
        "SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}})


def test_processor_environment(built):
    built.template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "results_processor.handler",
        "Environment": {"Variables": Match.object_like({
            "RESULTS_BUCKET": "results-bucket", "RESULTS_PREFIX": "results",
            "ALERT_TOPIC_ARN": {"Ref": Match.string_like_regexp("TelemetryAlerts")},
            "LOW_CONFIDENCE_THRESHOLD": "0.6", "ANOMALY_THRESHOLD": "0.9",
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE})}})


def test_processor_may_write_results_prefix_and_alert_only(built):
    policies = built.template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [
        {"Ref": Match.string_like_regexp("TelemetryResultsProcessorRole")}]}})
    (doc,) = [p["Properties"]["PolicyDocument"] for p in policies.values()]
    by_sid = {s.get("Sid", "OnFailure"): s for s in doc["Statement"]}
    assert sorted(by_sid) == ["Alert", "AlertKey", "OnFailure", "ResultsKey", "SeeMissingResults",
                             "StoreResults"]
    assert by_sid["OnFailure"]["Action"] == ["sqs:SendMessage", "sqs:GetQueueAttributes",
                                             "sqs:GetQueueUrl"]
    assert by_sid["OnFailure"]["Resource"] == {"Fn::GetAtt": [
        built.stack.get_logical_id(built.telemetry.failed_results.node.default_child), "Arn"]}
    assert by_sid["StoreResults"]["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert by_sid["StoreResults"]["Resource"]["Fn::Join"][1][-1] == ":s3:::results-bucket/results/*"
    assert by_sid["SeeMissingResults"]["Condition"] == {"StringLike": {"s3:prefix": ["results/*"]}}
    assert by_sid["Alert"]["Action"] == "sns:Publish"
    assert by_sid["AlertKey"]["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"]


def test_results_the_processor_fails_on_are_kept_encrypted(built):
    queue_id = built.stack.get_logical_id(built.telemetry.failed_results.node.default_child)
    built.template.has_resource_properties("AWS::Lambda::EventInvokeConfig", {
        "MaximumRetryAttempts": 2, "Qualifier": "$LATEST",
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue_id, "Arn"]}}}})
    built.template.has_resource_properties("AWS::SQS::Queue", {
        "SqsManagedSseEnabled": True, "MessageRetentionPeriod": 14 * 24 * 3600})
    built.template.has_resource_properties("AWS::SQS::QueuePolicy", {
        "PolicyDocument": {"Statement": [Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]}})


def test_rule_role_may_only_archive_and_log(built):
    roles = built.template.find_resources("AWS::IAM::Role", {"Properties": {
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Principal": {"Service": "iot.amazonaws.com"}})]}}})
    (role,) = roles.values()
    statements = role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert {s["Sid"]: s["Action"] for s in statements} == {
        "Archive": "s3:PutObject",
        "ErrorAction": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
        "ArchiveKey": "kms:GenerateDataKey"}


def test_alert_topic_is_encrypted_and_tls_only(built):
    built.template.has_resource_properties("AWS::SNS::Topic", {
        "KmsMasterKeyId": {"Fn::GetAtt": [Match.string_like_regexp("TelemetryAlertKey"), "Arn"]}})
    built.template.has_resource_properties("AWS::SNS::TopicPolicy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})
    built.template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True,
                                                             "Description": Match.string_like_regexp("alerts")})


def test_deployment_failures_of_this_deployment_alert(built):
    built.template.has_resource_properties("AWS::Events::Rule", {
        "EventPattern": {
            "source": ["aws.greengrass"],
            "detail-type": ["Greengrass V2 Effective Deployment Status Change"],
            "detail": {"coreDeviceExecutionStatus": ["FAILED", "REJECTED", "TIMED_OUT"],
                       "deploymentId": ["dep-123"]}},
        "Targets": [Match.object_like({"Arn": {"Ref": Match.string_like_regexp("TelemetryAlerts")}})]})


def _rule_pattern(built, detail_type: str) -> dict:
    (pattern,) = [r["Properties"]["EventPattern"]
                  for r in built.template.find_resources("AWS::Events::Rule").values()
                  if r["Properties"]["EventPattern"].get("detail-type") == [detail_type]]
    return pattern


def test_deployment_rule_matches_aws_documented_failure_event(built):
    pattern = _rule_pattern(built, "Greengrass V2 Effective Deployment Status Change")
    assert matches(pattern, DEPLOYMENT_STATUS_EVENT)
    other = json.loads(json.dumps(DEPLOYMENT_STATUS_EVENT))
    other["detail"]["deploymentId"] = "another-deployment"
    assert not matches(pattern, other)
    succeeded = json.loads(json.dumps(DEPLOYMENT_STATUS_EVENT))
    succeeded["detail"]["coreDeviceExecutionStatus"] = "SUCCEEDED"
    assert not matches(pattern, succeeded)


def test_component_rule_matches_aws_documented_broken_component_event(built):
    pattern = _rule_pattern(built, "Greengrass V2 Installed Component Status Change")
    assert matches(pattern, COMPONENT_STATUS_EVENT)
    running = json.loads(json.dumps(COMPONENT_STATUS_EVENT))
    running["detail"]["components"][0]["lifecycleState"] = "RUNNING"
    assert not matches(pattern, running)


def test_event_matcher_can_fail_on_a_wrong_field_name():
    assert not matches({"detail": {"deployment-id": ["dep-123"]}}, DEPLOYMENT_STATUS_EVENT)
    assert not matches({"detail": {"componentLifecycleState": ["BROKEN"]}}, COMPONENT_STATUS_EVENT)


def test_alarms_per_model_and_for_deployments(built):
    alarms = built.template.find_resources("AWS::CloudWatch::Alarm")
    by_metric = sorted((a["Properties"].get("MetricName"), json.dumps(a["Properties"].get("Dimensions")))
                       for a in alarms.values())
    assert len(alarms) == 6
    names = [m for m, _ in by_metric]
    assert names.count("InferenceErrors") == 2 and names.count("InferenceLatency") == 2
    assert "MatchedEvents" in names and "Errors" in names
    built.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "InferenceLatency", "Namespace": "NeoEdge", "ExtendedStatistic": "p90",
        "Threshold": 500, "Dimensions": [{"Name": "ModelName", "Value": "anomaly"}],
        "TreatMissingData": "notBreaching",
        "AlarmActions": [{"Ref": Match.string_like_regexp("TelemetryAlerts")}]})


def test_metric_methods(built):
    t = built.telemetry
    latency = t.metric_inference_latency("digits", statistic="p50")
    assert (latency.namespace, latency.metric_name, latency.statistic) == ("NeoEdge", "InferenceLatency", "p50")
    assert latency.dimensions == {"ModelName": "digits"}
    assert t.metric_inference_errors("digits").statistic == "Sum"
    assert t.metric_confidence("digits").statistic == "Average"
    assert t.metric_failed_deployments().namespace == "AWS/Events"
    assert t.metric_results_received().metric_name == "TopicMatch"


def test_dashboard_shows_latency_errors_confidence_and_deployments(built):
    (dash,) = built.template.find_resources("AWS::CloudWatch::Dashboard").values()
    assert dash["Properties"]["DashboardName"] == "cameras-fleet"
    body = json.dumps(dash["Properties"]["DashboardBody"])
    for needle in ("InferenceLatency", "InferenceErrors", "Confidence", "MatchedEvents",
                   "Deployment state", "LowConfidence"):
        assert needle in body


# ---------------------------------------------------------------------------------------
# Refusals


def make(**kwargs):
    stack = cdk.Stack(cdk.App(), "S")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="f")
    bucket = s3.Bucket.from_bucket_name(stack, "B", "bkt")
    props = dict(fleet=fleet, results_bucket=bucket, model_names=["m"])
    props.update(kwargs)
    return EdgeTelemetry(stack, "T", **props)


def test_fails_when_no_model_names():
    with pytest.raises(ValueError) as exc:
        make(model_names=[])
    assert str(exc.value) == "model_names must name at least one model; got none"


def test_fails_when_threshold_is_out_of_range():
    with pytest.raises(ValueError) as exc:
        make(low_confidence_threshold=1.5)
    assert str(exc.value) == "low_confidence_threshold must be from 0 to 1; got 1.5"


def test_fails_when_prefixes_collide():
    with pytest.raises(ValueError) as exc:
        make(results_prefix="data", archive_prefix="data")
    assert str(exc.value) == "results_prefix and archive_prefix must differ; got 'data' for both"


def test_fails_when_prefix_has_a_slash():
    with pytest.raises(ValueError) as exc:
        make(archive_prefix="archive/")
    assert str(exc.value) == ("archive_prefix must be a key prefix without a leading or trailing '/' "
                              "or '*'; got 'archive/'")


def test_fails_when_fleet_has_no_topic_prefix():
    stack = cdk.Stack(cdk.App(), "S")
    with pytest.raises(ValueError) as exc:
        EdgeTelemetry(stack, "T", fleet="f", results_bucket=s3.Bucket.from_bucket_name(stack, "B", "bkt"),
                      model_names=["m"])
    assert str(exc.value) == "fleet must be an EdgeFleet (an object with topic_prefix); got 'f'"
