"""EdgeTelemetry: IoT rules -> Firehose (Parquet, Glue, Athena) and a batched metrics
transform; alerts, alarms, dashboard.

External contracts come from botocore's service models (the IoT rule's ``FirehoseAction``,
Firehose's ``DataFormatConversionConfiguration``), validated with botocore's own
``ParamValidator``, and from the Athena user guide (partition projection); the named query
is parsed with sqlglot and checked against the Glue table's columns.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import aws_cdk as cdk
import botocore.session
import pytest
import sqlglot
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match
from botocore.validate import ParamValidator
from sqlglot import exp

from aws_samples import COMPONENT_STATUS_EVENT, DEPLOYMENT_STATUS_EVENT
from checks import event_matches as matches, synth_checked
from neo_edge.fleet import EdgeFleet
from neo_edge.telemetry import METRICS_NAMESPACE, RESULTS_COLUMNS, EdgeTelemetry


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
                              low_confidence_alarm_threshold=20)
    template = synth_checked(app, stack)
    return SimpleNamespace(template=template, telemetry=telemetry, stack=stack, fleet=fleet)


def _botocore_check(service: str, shape: str, params: dict) -> None:
    """``params`` (CloudFormation's keys, first letter lowered where the API's are) against
    the shape in botocore's model of ``service``: unknown or missing fields fail."""
    model = botocore.session.get_session().get_service_model(service).shape_for(shape)
    report = ParamValidator().validate(params, model)
    assert not report.has_errors(), report.generate_report()


def _lower_first(value):
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: _lower_first(v) for k, v in value.items()}
    return value


def _rules(built) -> dict:
    return {r["Properties"]["TopicRulePayload"]["Description"].split()[1]: r["Properties"]["TopicRulePayload"]
            for r in built.template.find_resources("AWS::IoT::TopicRule").values()}


def _stream(built, name: str) -> dict:
    (stream,) = [v["Properties"]["ExtendedS3DestinationConfiguration"]
                 for k, v in built.template.find_resources("AWS::KinesisFirehose::DeliveryStream").items()
                 if k.startswith(f"Telemetry{name}Stream")]
    return stream


def _table(built, name: str) -> dict:
    (table,) = [t["Properties"]["TableInput"]
                for t in built.template.find_resources("AWS::Glue::Table").values()
                if t["Properties"]["TableInput"]["Name"] == name]
    return table


def _resolved(built, value):
    return built.stack.resolve(value) if not isinstance(value, (str, int, bool)) else value


def test_results_rule_sends_each_batch_s_results_to_firehose_in_batch_mode(built):
    rule = _rules(built)["results"]
    assert rule["Sql"] == ("SELECT VALUE results FROM 'neo-edge/+/+' WHERE (topic(3) = 'results' "
                           "OR topic(3) = 'errors') AND device = topic(2)")
    assert rule["AwsIotSqlVersion"] == "2016-03-23"
    (action,) = rule["Actions"]
    assert list(action) == ["Firehose"]
    firehose = action["Firehose"]
    assert firehose["BatchMode"] is True and firehose["Separator"] == "\n"
    # botocore/data/iot/2015-05-28/service-2.json: FirehoseAction {roleArn, deliveryStreamName,
    # separator, batchMode}; the values stand in for the tokens.
    _botocore_check("iot", "FirehoseAction", _lower_first(
        {**firehose, "DeliveryStreamName": "results", "RoleArn": "arn:aws:iam::1:role/r"}))
    assert "CloudwatchLogs" in rule["ErrorAction"]


def test_summary_rule_takes_the_device_from_the_topic(built):
    rule = _rules(built)["summaries"]
    assert rule["Sql"] == "SELECT *, topic(2) AS device FROM 'neo-edge/+/summary'"
    (action,) = rule["Actions"]
    assert action["Firehose"]["BatchMode"] is False


def test_no_function_and_no_object_per_result(built):
    """The results path has no Lambda action and no S3 action: Firehose batches."""
    for rule in _rules(built).values():
        for action in rule["Actions"]:
            assert not {"Lambda", "S3"} & set(action), action
    assert not built.template.find_resources("AWS::Lambda::Permission")


def test_results_are_converted_to_parquet_against_the_glue_table(built):
    stream = _stream(built, "Results")
    conversion = stream["DataFormatConversionConfiguration"]
    # botocore/data/firehose/2015-08-04/service-2.json: DataFormatConversionConfiguration.
    schema = dict(conversion["SchemaConfiguration"], CatalogId="123456789012", Region="us-east-1",
                  RoleARN="arn:aws:iam::123456789012:role/r")
    _botocore_check("firehose", "DataFormatConversionConfiguration",
                    dict(conversion, SchemaConfiguration=schema))
    assert conversion["Enabled"] is True
    assert conversion["OutputFormatConfiguration"] == {"Serializer": {"ParquetSerDe": {"Compression": "SNAPPY"}}}
    assert (schema["DatabaseName"], schema["TableName"]) == ("cameras_telemetry", "results")
    # Format conversion needs a buffer of at least 64 MB (Firehose's BufferingHints).
    assert stream["BufferingHints"]["SizeInMBs"] >= 64
    assert stream["DynamicPartitioningConfiguration"] == {"Enabled": True}
    (processor,) = stream["ProcessingConfiguration"]["Processors"]
    assert processor["Type"] == "MetadataExtraction"
    assert {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{model: .model_name}"} in processor["Parameters"]


def test_firehose_prefix_is_where_the_table_projects_its_partitions(built):
    """The S3 layout Firehose writes and the one Athena reads must be the same."""
    prefix = _stream(built, "Results")["Prefix"]
    table = _table(built, "results")
    template = table["Parameters"]["storage.location.template"]
    assert template == "s3://results-bucket/results/model=${model}/dt=${dt}/"
    as_firehose = template.replace("s3://results-bucket/", "").replace(
        "${model}", "!{partitionKeyFromQuery:model}").replace("${dt}", "!{timestamp:yyyy-MM-dd}")
    assert prefix == as_firehose
    # Athena user guide, "Supported types for partition projection" (enum, date):
    # https://docs.aws.amazon.com/athena/latest/ug/partition-projection-supported-types.html
    params = table["Parameters"]
    assert params["projection.enabled"] == "true"
    assert (params["projection.model.type"], params["projection.model.values"]) == ("enum", "digits,anomaly")
    assert (params["projection.dt.type"], params["projection.dt.format"]) == ("date", "yyyy-MM-dd")
    assert params["projection.dt.range"].endswith(",NOW")
    assert [k["Name"] for k in table["PartitionKeys"]] == ["model", "dt"]


def test_table_columns_are_the_ones_devices_publish(built):
    table = _table(built, "results")
    columns = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    assert columns == dict(RESULTS_COLUMNS)
    assert table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")


def test_named_query_uses_only_columns_of_the_table_with_their_types(built):
    (query,) = built.template.find_resources("AWS::Athena::NamedQuery").values()
    sql = query["Properties"]["QueryString"]
    assert query["Properties"]["Database"] == "cameras_telemetry"
    table = _table(built, "results")
    types = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"] + table["PartitionKeys"]}
    tree = sqlglot.parse_one(sql, read="athena")
    (source,) = list(tree.find_all(exp.Table))
    assert (source.db, source.name) == ("cameras_telemetry", "results")
    aliases = {a.alias for a in tree.find_all(exp.Alias)}
    used = {c.name for c in tree.find_all(exp.Column)} - aliases
    assert used <= set(types), used - set(types)
    assert {"latency_ms", "model_version", "dt", "model"} <= used
    (percentile,) = list(tree.find_all(exp.ApproxQuantile))
    assert percentile.this.name == "latency_ms" and types["latency_ms"] == "double"
    assert float(percentile.args["quantile"].name) == 0.9
    grouped = {c.name for c in tree.find(exp.Group).find_all(exp.Column)}
    assert grouped == {"model", "model_version", "dt"}
    assert all(types[c] == "string" for c in grouped)


def test_named_query_check_can_fail_on_an_unknown_column(built):
    table = _table(built, "results")
    types = {c["Name"] for c in table["StorageDescriptor"]["Columns"] + table["PartitionKeys"]}
    tree = sqlglot.parse_one('SELECT approx_percentile(latency, 0.9) FROM "d"."results"', read="athena")
    assert {c.name for c in tree.find_all(exp.Column)} - types == {"latency"}


def test_workgroup_encrypts_results_and_caps_scans(built):
    built.template.has_resource_properties("AWS::Athena::WorkGroup", {
        "Name": "cameras-telemetry",
        "WorkGroupConfiguration": Match.object_like({
            "EnforceWorkGroupConfiguration": True,
            "BytesScannedCutoffPerQuery": Match.any_value(),
            "ResultConfiguration": {"OutputLocation": "s3://results-bucket/athena-results/",
                                    "EncryptionConfiguration": Match.object_like({
                                        "EncryptionOption": "SSE_KMS"})}})})
    (query,) = built.template.find_resources("AWS::Athena::NamedQuery").values()
    assert query["Properties"]["WorkGroup"] == {"Ref": Match.string_like_regexp("TelemetryWorkGroup")} or \
        query["Properties"]["WorkGroup"]["Ref"].startswith("TelemetryWorkGroup")


def test_summaries_go_through_the_batched_metrics_transform(built):
    stream = _stream(built, "Summaries")
    assert stream["CompressionFormat"] == "GZIP"
    assert stream["Prefix"] == "summaries/dt=!{timestamp:yyyy-MM-dd}/"
    (processor,) = stream["ProcessingConfiguration"]["Processors"]
    params = {p["ParameterName"]: p["ParameterValue"] for p in processor["Parameters"]}
    assert processor["Type"] == "Lambda"
    assert params["LambdaArn"]["Fn::GetAtt"][0].startswith("TelemetrySummaryMetrics")
    assert params["BufferIntervalInSeconds"] == "60"
    built.template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "summary_metrics.handler",
        "Environment": {"Variables": Match.object_like({"METRICS_NAMESPACE": METRICS_NAMESPACE})}})


def test_transform_may_put_metrics_in_its_namespace_only(built):
    policies = built.template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [
        {"Ref": Match.string_like_regexp("TelemetrySummaryMetricsRole")}]}})
    (doc,) = [p["Properties"]["PolicyDocument"] for p in policies.values()]
    (put,) = [s for s in doc["Statement"] if s.get("Sid") == "PutMetrics"]
    assert put["Action"] == "cloudwatch:PutMetricData"
    assert put["Condition"] == {"StringEquals": {"cloudwatch:namespace": "NeoEdge"}}


def test_rule_role_may_only_put_records_and_log(built):
    roles = built.template.find_resources("AWS::IAM::Role", {"Properties": {
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Principal": {"Service": "iot.amazonaws.com"}})]}}})
    (role,) = roles.values()
    statements = role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert {s["Sid"]: s["Action"] for s in statements} == {
        "Firehose": ["firehose:PutRecord", "firehose:PutRecordBatch"],
        "ErrorAction": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]}


def test_fleet_may_upload_captures_under_the_capture_prefix_only(built):
    role_id = built.stack.get_logical_id(built.fleet.token_exchange_role.node.default_child)
    policies = built.template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [
        {"Ref": role_id}]}})
    statements = [s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]]
    (put,) = [s for s in statements if s["Action"] == "s3:PutObject"]
    assert put["Resource"]["Fn::Join"][1][-1] == ":s3:::results-bucket/captured/*"
    assert built.stack.resolve(built.telemetry.capture_destination()) == "s3://results-bucket/captured"


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
    names = sorted(a["Properties"].get("MetricName") for a in alarms.values())
    assert len(alarms) == 10
    for metric in ("InferenceErrors", "InferenceLatency", "Anomalies", "LowConfidence"):
        assert names.count(metric) == 2
    assert "MatchedEvents" in names and "Errors" in names
    built.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "InferenceLatency", "Namespace": "NeoEdge", "ExtendedStatistic": "p90",
        "Threshold": 500, "Dimensions": [{"Name": "ModelName", "Value": "anomaly"}],
        "TreatMissingData": "notBreaching",
        "AlarmActions": [{"Ref": Match.string_like_regexp("TelemetryAlerts")}]})
    built.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "LowConfidence", "Threshold": 20, "Statistic": "Sum"})


def test_metric_methods(built):
    t = built.telemetry
    latency = t.metric_inference_latency("digits", statistic="p50")
    assert (latency.namespace, latency.metric_name, latency.statistic) == ("NeoEdge", "InferenceLatency", "p50")
    assert latency.dimensions == {"ModelName": "digits"}
    assert t.metric_inference_errors("digits").statistic == "Sum"
    assert t.metric_confidence("digits").statistic == "Average"
    assert t.metric_failed_deployments().namespace == "AWS/Events"
    assert t.metric_results_received().metric_name == "TopicMatch"
    per_version = t.metric_per_version("InferenceLatency", "digits", "p90")
    assert per_version.expression == (
        'SEARCH(\'{NeoEdge,ModelName,ModelVersion} MetricName="InferenceLatency" '
        'ModelName="digits"\', \'p90\', 300)')


def test_dashboard_shows_each_model_version(built):
    (dash,) = built.template.find_resources("AWS::CloudWatch::Dashboard").values()
    assert dash["Properties"]["DashboardName"] == "cameras-fleet"
    body = json.dumps(built.stack.resolve(dash["Properties"]["DashboardBody"]))
    for needle in ("InferenceLatency", "InferenceErrors", "Confidence", "MatchedEvents",
                   "Deployment state", "LowConfidence", "DeliveryToS3.Records"):
        assert needle in body
    searches = re.findall(r"SEARCH\(.*?\)", body)
    assert any("ModelName,ModelVersion" in q and "InferenceLatency" in q and "p90" in q
               for q in searches)


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


def test_fails_when_an_alarm_threshold_is_below_one():
    with pytest.raises(ValueError) as exc:
        make(anomaly_alarm_threshold=0)
    assert str(exc.value) == "anomaly_alarm_threshold must be at least 1; got 0"


def test_fails_when_prefixes_collide():
    with pytest.raises(ValueError) as exc:
        make(results_prefix="data", capture_prefix="data")
    assert str(exc.value) == "results_prefix and capture_prefix must differ; got 'data' for both"


def test_fails_when_a_model_name_cannot_be_a_partition():
    with pytest.raises(ValueError) as exc:
        make(model_names=["my model"])
    assert str(exc.value) == ("model_names must be letters, digits, '.', '_' or '-' (they become S3 "
                              "partitions); got 'my model'")


def test_fails_when_the_buffer_interval_is_outside_firehose_s_range():
    with pytest.raises(ValueError) as exc:
        make(results_buffer_interval=cdk.Duration.minutes(30))
    assert str(exc.value) == ("results_buffer_interval must be from 60 to 900 seconds (Firehose's "
                              "range); got 1800 seconds")


def test_fails_when_prefix_has_a_slash():
    with pytest.raises(ValueError) as exc:
        make(summaries_prefix="archive/")
    assert str(exc.value) == ("summaries_prefix must be a key prefix without a leading or trailing '/' "
                              "or '*'; got 'archive/'")


def test_fails_when_fleet_has_no_topic_prefix():
    stack = cdk.Stack(cdk.App(), "S")
    with pytest.raises(ValueError) as exc:
        EdgeTelemetry(stack, "T", fleet="f", results_bucket=s3.Bucket.from_bucket_name(stack, "B", "bkt"),
                      model_names=["m"])
    assert str(exc.value) == "fleet must be an EdgeFleet (an object with topic_prefix); got 'f'"
