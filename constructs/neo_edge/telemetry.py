"""``EdgeTelemetry``: what the fleet reports, stored for SQL, measured, alarmed on, shown.

Devices publish (``neo_edge_runtime.telemetry``) on IoT Core:

- ``<topic_prefix>/<thing>/results`` and ``.../errors``: batches of the results they were
  configured to publish (all, a sample, or only the notable ones), ``{"device", "results":
  [...]}``, a dozen results to a 5 KB message;
- ``<topic_prefix>/<thing>/summary``: a summary per model version every minute or so
  (counts, errors by kind, latency and confidence histograms).

No function runs and no object is written per result:

- the **results rule** (``topic_rule``) hands each batch's results to the ``results``
  Amazon Data Firehose stream in batch mode (one ``PutRecordBatch``, a record per result).
  Firehose converts them to Parquet against the Glue table ``results`` and writes an object
  every few minutes per model under ``<results_prefix>/model=<model>/dt=<yyyy-MM-dd>/``
  (dynamic partitioning on ``model_name``). The table uses partition projection, so no
  crawler and no ``MSCK REPAIR``: a new day or object is queryable at once;
- the **summary rule** hands each summary to the ``summaries`` stream, whose transform
  (``summary_metrics``, one invocation per buffered batch of summaries) puts the metrics
  (``Inferences``, ``InferenceErrors``, ``InferenceLatency`` and ``Confidence`` as
  distributions, ``LowConfidence``, ``Anomalies``, ``ResultsPublished``, each per
  ``ModelName`` and per ``ModelName`` + ``ModelVersion``) and passes them on to S3 as
  gzipped JSON lines under ``<summaries_prefix>/dt=<yyyy-MM-dd>/`` (the Glue table
  ``summaries``). Summaries are small (one per device and minute, 1/600 of the results of a
  device serving 10 a second), so Parquet's conversion charge buys little there;
- an **Athena workgroup** (results encrypted, bytes scanned per query capped) with a
  named query, ``p90 latency per model version per day``;
- devices' captured inputs (``capture`` in the component configuration) may be uploaded
  under ``<capture_prefix>/`` through the token exchange role: ``grant_capture_upload``.

A batch is forwarded only when its ``device`` is the thing name in the topic (the fleet's
IoT policy lets a device publish under its own name only); each result's own ``device`` is
written by the same device and is not checked one by one (IoT SQL offers no per-element
rewrite of an array in batch mode). Summaries get their ``device`` from the topic.

Greengrass deployment failures on devices (and components that break) arrive as
EventBridge events; rules forward them to the alert topic, and their match counts are
the ``failed deployments`` and ``broken components`` metrics. Alarms on inference
errors, latency, anomalies (and, if asked, low-confidence results), failed deployments
and the metrics transform's own errors notify the same topic, and the dashboard shows all
of it on one page, per model version.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import aws_cdk as cdk
from aws_cdk import aws_athena as athena
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_kinesisfirehose as firehose
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from . import _checkov
from ._lambda import bundled_function, check_reserved_concurrency
from .fleet import acknowledge_wildcards
from .interfaces import IEdgeDeployment, IEdgeFleet

__all__ = ["EdgeTelemetry", "METRICS_NAMESPACE", "P90_LATENCY_QUERY", "PROJECTION_START",
           "RESULTS_COLUMNS", "RESULTS_PARTITIONS", "SUMMARIES_COLUMNS"]

#: The namespace ``summary_metrics`` puts its metrics in.
METRICS_NAMESPACE = "NeoEdge"

_FAILED_DEPLOYMENT = ("FAILED", "REJECTED", "TIMED_OUT")
_BROKEN_COMPONENT = ("BROKEN", "ERRORED")

#: The results table: one row per published result, the fields ``edge_inference`` writes
#: (Hive types; a field not listed, such as a regression's ``value``, is not stored).
RESULTS_COLUMNS = (
    ("request_id", "string"), ("device", "string"), ("model_name", "string"),
    ("model_version", "string"), ("timestamp", "timestamp"), ("task", "string"),
    ("latency_ms", "double"), ("queue_ms", "double"), ("batch_size", "int"),
    ("confidence", "double"), ("labels", "array<string>"), ("scores", "array<double>"),
    ("anomaly_score", "double"), ("anomaly", "boolean"),
    ("error", "struct<type:string,message:string>"), ("reason", "string"),
)
#: Partitions of the results table: the model (an enum of ``model_names``) and the day.
RESULTS_PARTITIONS = (("model", "string"), ("dt", "string"))
#: The summaries table (``neo_edge_runtime.telemetry.Window.summary``).
_HISTOGRAM = "struct<bounds:array<double>,counts:array<bigint>,sum:double,min:double,max:double>"
SUMMARIES_COLUMNS = (
    ("device", "string"), ("model_name", "string"), ("model_version", "string"),
    ("window_start", "string"), ("window_end", "string"), ("inferences", "bigint"),
    ("errors", "bigint"), ("errors_by_kind", "map<string,bigint>"),
    ("low_confidence", "bigint"), ("anomalies", "bigint"), ("published", "bigint"),
    ("captured", "bigint"), ("latency_ms", _HISTOGRAM),
    ("confidence", "struct<bounds:array<double>,counts:array<bigint>>"),
)
#: The day partitions start here (partition projection needs a range).
PROJECTION_START = "2024-01-01"

#: The named query shipped with the construct; ``{database}`` is the Glue database.
P90_LATENCY_QUERY = """SELECT model, model_version, dt AS day,
       approx_percentile(latency_ms, 0.9) AS p90_latency_ms,
       count(*) AS results
FROM "{database}"."results"
WHERE error IS NULL AND latency_ms IS NOT NULL
GROUP BY model, model_version, dt
ORDER BY day, model, model_version"""


def _glue_name(text: str) -> str:
    """Glue database names: lowercase letters, digits and underscores."""
    return re.sub(r"[^a-z0-9_]", "_", text.lower())[:200]


class EdgeTelemetry(Construct):
    """What the fleet reports, stored for SQL, measured, alarmed on and shown.

    Parameters
    ----------
    fleet:
        Any :class:`~neo_edge.interfaces.IEdgeFleet` (its ``topic_prefix`` and
        ``fleet_name`` are read): an ``EdgeFleet`` of this stack or another one, or
        ``EdgeFleet.from_thing_group_name(...)``.
    results_bucket:
        Where results (Parquet), summaries (gzipped JSON), Athena's query results and
        captured inputs go, each under a prefix of its own: any ``s3.IBucket``
        (``s3.Bucket.from_bucket_attributes(..., encryption_key=...)`` for one that
        exists, so that its key is used and granted too).
    model_names:
        The models devices report (their ``model_name``): the results table's ``model``
        partitions, the alarms and the dashboard.
    deployment:
        Only this deployment's failures count: any
        :class:`~neo_edge.interfaces.IEdgeDeployment` (its ``deployment_id`` is read),
        e.g. ``EdgeDeployment.from_deployment_id(...)``. Default: every Greengrass
        deployment failure in the account and region.
    alert_topic:
        Where alerts and alarms go: any ``sns.ITopic``, including an imported one (if it
        is encrypted, its key policy must let CloudWatch and EventBridge use the key).
        Default: a topic is created, encrypted with a KMS key of its own (rotated) and
        accepting TLS only.
    latency_alarm_threshold:
        Alarm when a model's p90 latency stays above it. Default: 500 ms.
    error_alarm_threshold:
        Alarm when a model has more error results in 5 minutes. Default: 5.
    anomaly_alarm_threshold:
        Alarm when a model reports this many anomalies in 5 minutes. Default: 1 (each
        5 minutes with an anomaly alerts).
    low_confidence_alarm_threshold:
        Alarm when a model reports this many low-confidence results in 5 minutes (the
        devices' ``lowConfidenceThreshold`` decides what is low). Default: no alarm.
    results_prefix, summaries_prefix, capture_prefix:
        Key prefixes in ``results_bucket``. Default: ``results``, ``summaries`` and
        ``captured``. Firehose's failed records go under ``<prefix>-errors``, Athena's
        query results under ``athena-results``.
    results_buffer_interval:
        How long Firehose gathers results before it writes an object (per model and
        day): fewer, larger Parquet files against fresher data. Default: 5 minutes.
    database_name:
        The Glue database. Default: ``<fleet name>_telemetry`` (lowercase, ``_`` for
        other characters).
    dashboard_name:
        Default: ``<fleet name>-fleet``.
    summary_metrics_reserved_concurrent_executions:
        Concurrency reserved for the metrics transform. Default: none reserved (it runs once
        per buffered batch of summaries, about once a minute per Firehose shard).

    Attributes
    ----------
    topic_rule (results), summary_rule, results_stream, summaries_stream, database,
    results_table, summaries_table, workgroup, named_query, summary_metrics (the transform
    function), alert_topic, deployment_failures_rule, broken_components_rule, dashboard,
    alarms (name to ``cloudwatch.Alarm``)
    """

    def __init__(self, scope: Construct, id: str, *, fleet: IEdgeFleet, results_bucket: s3.IBucket,
                 model_names: Sequence[str], deployment: Optional[IEdgeDeployment] = None,
                 alert_topic: Optional[sns.ITopic] = None,
                 latency_alarm_threshold: cdk.Duration = cdk.Duration.millis(500),
                 error_alarm_threshold: int = 5, anomaly_alarm_threshold: int = 1,
                 low_confidence_alarm_threshold: Optional[int] = None,
                 results_prefix: str = "results", summaries_prefix: str = "summaries",
                 capture_prefix: str = "captured",
                 results_buffer_interval: cdk.Duration = cdk.Duration.minutes(5),
                 database_name: Optional[str] = None,
                 dashboard_name: Optional[str] = None,
                 summary_metrics_reserved_concurrent_executions: Optional[int] = None) -> None:
        super().__init__(scope, id)
        if not model_names:
            raise ValueError("model_names must name at least one model; got none")
        if len(set(model_names)) != len(model_names):
            raise ValueError(f"model_names must not repeat; got {', '.join(model_names)}")
        for name in model_names:
            if not re.match(r"^[A-Za-z0-9._-]{1,128}$", str(name)):
                raise ValueError(f"model_names must be letters, digits, '.', '_' or '-' (they "
                                 f"become S3 partitions); got {name!r}")
        for what, value in (("error_alarm_threshold", error_alarm_threshold),
                            ("anomaly_alarm_threshold", anomaly_alarm_threshold),
                            ("low_confidence_alarm_threshold", low_confidence_alarm_threshold)):
            if value is not None and value < 1:
                raise ValueError(f"{what} must be at least 1; got {value!r}")
        prefixes = (("results_prefix", results_prefix), ("summaries_prefix", summaries_prefix),
                    ("capture_prefix", capture_prefix))
        for what, prefix in prefixes:
            if not prefix or prefix.startswith("/") or prefix.endswith("/") or "*" in prefix:
                raise ValueError(f"{what} must be a key prefix without a leading or trailing '/' "
                                 f"or '*'; got {prefix!r}")
        seen: dict = {}
        for what, prefix in prefixes:
            if prefix in seen:
                raise ValueError(f"{seen[prefix]} and {what} must differ; got {prefix!r} for both")
            seen[prefix] = what
        check_reserved_concurrency("summary_metrics_reserved_concurrent_executions",
                                   summary_metrics_reserved_concurrent_executions)
        interval = results_buffer_interval.to_seconds()
        if not 60 <= interval <= 900:
            raise ValueError(f"results_buffer_interval must be from 60 to 900 seconds (Firehose's "
                             f"range); got {interval} seconds")
        topic_prefix = getattr(fleet, "topic_prefix", None)
        if not topic_prefix:
            raise ValueError(f"fleet must be an EdgeFleet (an object with topic_prefix); got {fleet!r}")
        stack = cdk.Stack.of(self)
        self.model_names = list(model_names)
        self.fleet_name = str(getattr(fleet, "fleet_name", "neo-edge"))
        self.results_prefix, self.summaries_prefix = results_prefix, summaries_prefix
        self.capture_prefix = capture_prefix
        self._bucket = results_bucket
        bucket_key = results_bucket.encryption_key

        # --- alerts -------------------------------------------------------------------
        if alert_topic is None:
            key = kms.Key(self, "AlertKey", enable_key_rotation=True,
                          description=f"neo-edge alerts of the fleet {self.fleet_name}")
            # CloudWatch alarms and EventBridge publish to the encrypted topic.
            key.add_to_resource_policy(iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com"),
                            iam.ServicePrincipal("events.amazonaws.com")],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}}))
            alert_topic = sns.Topic(self, "Alerts", master_key=key, enforce_ssl=True,
                                    display_name=f"neo-edge {self.fleet_name} alerts")
        self.alert_topic = alert_topic

        # --- the Glue catalog -------------------------------------------------------------
        db_name = database_name or _glue_name(f"{self.fleet_name}_telemetry")
        self.database = glue.CfnDatabase(
            self, "Database", catalog_id=stack.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=db_name, description=f"neo-edge telemetry of the fleet {self.fleet_name}"))
        self.database_name = db_name
        location = f"s3://{results_bucket.bucket_name}/{results_prefix}/"
        # Partition projection (Athena user guide, "Partition projection with Amazon
        # Athena"; "Supported types for partition projection": enum, date).
        self.results_table = glue.CfnTable(
            self, "ResultsTable", catalog_id=stack.account, database_name=db_name,
            table_input=glue.CfnTable.TableInputProperty(
                name="results", table_type="EXTERNAL_TABLE",
                description="one row per result a device published (Parquet, by Firehose)",
                partition_keys=[glue.CfnTable.ColumnProperty(name=n, type=t)
                                for n, t in RESULTS_PARTITIONS],
                parameters={
                    "classification": "parquet", "EXTERNAL": "TRUE",
                    "projection.enabled": "true",
                    "projection.model.type": "enum",
                    "projection.model.values": ",".join(self.model_names),
                    "projection.dt.type": "date",
                    "projection.dt.format": "yyyy-MM-dd",
                    "projection.dt.range": f"{PROJECTION_START},NOW",
                    "projection.dt.interval": "1",
                    "projection.dt.interval.unit": "DAYS",
                    "storage.location.template": f"{location}model=${{model}}/dt=${{dt}}/",
                },
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    columns=[glue.CfnTable.ColumnProperty(name=n, type=t)
                             for n, t in RESULTS_COLUMNS],
                    location=location,
                    input_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library="org.apache.hadoop.hive.ql.io.parquet.serde."
                                              "ParquetHiveSerDe"))))
        self.results_table.node.add_dependency(self.database)
        summaries_location = f"s3://{results_bucket.bucket_name}/{summaries_prefix}/"
        self.summaries_table = glue.CfnTable(
            self, "SummariesTable", catalog_id=stack.account, database_name=db_name,
            table_input=glue.CfnTable.TableInputProperty(
                name="summaries", table_type="EXTERNAL_TABLE",
                description="the devices' summaries (gzipped JSON lines, by Firehose)",
                partition_keys=[glue.CfnTable.ColumnProperty(name="dt", type="string")],
                parameters={
                    "classification": "json", "compressionType": "gzip", "EXTERNAL": "TRUE",
                    "projection.enabled": "true", "projection.dt.type": "date",
                    "projection.dt.format": "yyyy-MM-dd",
                    "projection.dt.range": f"{PROJECTION_START},NOW",
                    "projection.dt.interval": "1", "projection.dt.interval.unit": "DAYS",
                    "storage.location.template": f"{summaries_location}dt=${{dt}}/",
                },
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    columns=[glue.CfnTable.ColumnProperty(name=n, type=t)
                             for n, t in SUMMARIES_COLUMNS],
                    location=summaries_location,
                    input_format="org.apache.hadoop.mapred.TextInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library="org.openx.data.jsonserde.JsonSerDe"))))
        self.summaries_table.node.add_dependency(self.database)

        # --- Firehose ---------------------------------------------------------------------
        delivery_logs = logs.LogGroup(self, "DeliveryLogs", retention=logs.RetentionDays.THREE_MONTHS,
                                      removal_policy=cdk.RemovalPolicy.RETAIN)
        stream_objects = [results_bucket.arn_for_objects(f"{p}/*") for p in (
            results_prefix, f"{results_prefix}-errors", summaries_prefix, f"{summaries_prefix}-errors")]
        delivery_statements = [
            iam.PolicyStatement(sid="Deliver", actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                                resources=stream_objects),
            iam.PolicyStatement(sid="Bucket", actions=["s3:GetBucketLocation",
                                                       "s3:ListBucketMultipartUploads"],
                                resources=[results_bucket.bucket_arn]),
            iam.PolicyStatement(sid="Schema", actions=["glue:GetTable", "glue:GetTableVersion",
                                                       "glue:GetTableVersions"],
                                resources=[
                                    stack.format_arn(service="glue", resource="catalog"),
                                    stack.format_arn(service="glue", resource="database",
                                                     resource_name=db_name),
                                    stack.format_arn(service="glue", resource="table",
                                                     resource_name=f"{db_name}/results")]),
            iam.PolicyStatement(sid="Logs", actions=["logs:PutLogEvents"],
                                resources=[delivery_logs.log_group_arn]),
        ]
        if bucket_key is not None:
            delivery_statements.append(iam.PolicyStatement(
                sid="BucketKey", actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[bucket_key.key_arn]))

        # The summaries' transform: metrics from a batch of summaries per invocation.
        fn = bundled_function(self, "SummaryMetrics", "summary_metrics",
                              environment={"METRICS_NAMESPACE": METRICS_NAMESPACE,
                                           "POWERTOOLS_SERVICE_NAME": "summary_metrics"},
                              timeout=cdk.Duration.minutes(1),
                              reserved_concurrent_executions=summary_metrics_reserved_concurrent_executions,
                              description=f"neo-edge metrics from the summaries of the fleet "
                                          f"{self.fleet_name}")
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="PutMetrics", actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}}))
        cdk.Validations.of(fn.role).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="cloudwatch:PutMetricData has no resource type; the grant is limited to the "
                   f"{METRICS_NAMESPACE} namespace by its condition"))
        self.summary_metrics = fn
        _checkov.invoked_synchronously(fn, "Kinesis Data Firehose, whose data transformation "
                                           "waits for each batch's records back")
        delivery_statements.append(iam.PolicyStatement(
            sid="Transform", actions=["lambda:InvokeFunction", "lambda:GetFunctionConfiguration"],
            resources=[fn.function_arn, f"{fn.function_arn}:*"]))
        delivery_role = iam.Role(
            self, "DeliveryRole", assumed_by=iam.ServicePrincipal(
                "firehose.amazonaws.com", conditions={"StringEquals": {
                    "sts:ExternalId": stack.account}}),
            description=f"neo-edge telemetry delivery of the fleet {self.fleet_name}",
            inline_policies={"Delivery": iam.PolicyDocument(statements=delivery_statements)})
        acknowledge_wildcards(
            delivery_role, stream_objects + [f"{fn.function_arn}:*"],
            reason="Firehose writes new objects (names it makes at run time) under the "
                   "telemetry prefixes only, and invokes the transform function's versions")
        encryption = (firehose.CfnDeliveryStream.EncryptionConfigurationProperty(
            kms_encryption_config=firehose.CfnDeliveryStream.KMSEncryptionConfigProperty(
                awskms_key_arn=bucket_key.key_arn)) if bucket_key is not None else None)

        def stream_logs(name: str):
            return firehose.CfnDeliveryStream.CloudWatchLoggingOptionsProperty(
                enabled=True, log_group_name=delivery_logs.log_group_name, log_stream_name=name)

        sse = firehose.CfnDeliveryStream.DeliveryStreamEncryptionConfigurationInputProperty(
            key_type="AWS_OWNED_CMK")
        self.results_stream = firehose.CfnDeliveryStream(
            self, "ResultsStream", delivery_stream_type="DirectPut",
            delivery_stream_encryption_configuration_input=sse,
            extended_s3_destination_configuration=firehose.CfnDeliveryStream.ExtendedS3DestinationConfigurationProperty(
                bucket_arn=results_bucket.bucket_arn, role_arn=delivery_role.role_arn,
                prefix=f"{results_prefix}/model=!{{partitionKeyFromQuery:model}}/"
                       f"dt=!{{timestamp:yyyy-MM-dd}}/",
                error_output_prefix=f"{results_prefix}-errors/!{{firehose:error-output-type}}/"
                                    f"dt=!{{timestamp:yyyy-MM-dd}}/",
                # Parquet conversion needs a buffer of at least 64 MB.
                buffering_hints=firehose.CfnDeliveryStream.BufferingHintsProperty(
                    interval_in_seconds=int(interval), size_in_m_bs=128),
                compression_format="UNCOMPRESSED",  # Parquet compresses (SNAPPY) itself
                encryption_configuration=encryption,
                cloud_watch_logging_options=stream_logs("results"),
                dynamic_partitioning_configuration=firehose.CfnDeliveryStream.DynamicPartitioningConfigurationProperty(
                    enabled=True),
                processing_configuration=firehose.CfnDeliveryStream.ProcessingConfigurationProperty(
                    enabled=True, processors=[firehose.CfnDeliveryStream.ProcessorProperty(
                        type="MetadataExtraction", parameters=[
                            firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                parameter_name="MetadataExtractionQuery",
                                parameter_value="{model: .model_name}"),
                            firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                parameter_name="JsonParsingEngine", parameter_value="JQ-1.6")])]),
                data_format_conversion_configuration=firehose.CfnDeliveryStream.DataFormatConversionConfigurationProperty(
                    enabled=True,
                    schema_configuration=firehose.CfnDeliveryStream.SchemaConfigurationProperty(
                        catalog_id=stack.account, database_name=db_name, table_name="results",
                        region=stack.region, role_arn=delivery_role.role_arn, version_id="LATEST"),
                    input_format_configuration=firehose.CfnDeliveryStream.InputFormatConfigurationProperty(
                        deserializer=firehose.CfnDeliveryStream.DeserializerProperty(
                            hive_json_ser_de=firehose.CfnDeliveryStream.HiveJsonSerDeProperty(
                                # edge_inference's timestamps: 2024-05-01T12:00:00.123Z
                                timestamp_formats=["yyyy-MM-dd'T'HH:mm:ss.SSS'Z'", "millis"]))),
                    output_format_configuration=firehose.CfnDeliveryStream.OutputFormatConfigurationProperty(
                        serializer=firehose.CfnDeliveryStream.SerializerProperty(
                            parquet_ser_de=firehose.CfnDeliveryStream.ParquetSerDeProperty(
                                compression="SNAPPY"))))))
        self.results_stream.node.add_dependency(self.results_table)
        self.summaries_stream = firehose.CfnDeliveryStream(
            self, "SummariesStream", delivery_stream_type="DirectPut",
            delivery_stream_encryption_configuration_input=sse,
            extended_s3_destination_configuration=firehose.CfnDeliveryStream.ExtendedS3DestinationConfigurationProperty(
                bucket_arn=results_bucket.bucket_arn, role_arn=delivery_role.role_arn,
                prefix=f"{summaries_prefix}/dt=!{{timestamp:yyyy-MM-dd}}/",
                error_output_prefix=f"{summaries_prefix}-errors/!{{firehose:error-output-type}}/"
                                    f"dt=!{{timestamp:yyyy-MM-dd}}/",
                buffering_hints=firehose.CfnDeliveryStream.BufferingHintsProperty(
                    interval_in_seconds=300, size_in_m_bs=64),
                compression_format="GZIP", encryption_configuration=encryption,
                cloud_watch_logging_options=stream_logs("summaries"),
                processing_configuration=firehose.CfnDeliveryStream.ProcessingConfigurationProperty(
                    enabled=True, processors=[firehose.CfnDeliveryStream.ProcessorProperty(
                        type="Lambda", parameters=[
                            firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                parameter_name="LambdaArn", parameter_value=fn.function_arn),
                            firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                parameter_name="BufferSizeInMBs", parameter_value="1"),
                            firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                parameter_name="BufferIntervalInSeconds", parameter_value="60")])])))

        # --- the topic rules ----------------------------------------------------------------
        errors = logs.LogGroup(self, "RuleErrors", retention=logs.RetentionDays.THREE_MONTHS,
                               removal_policy=cdk.RemovalPolicy.RETAIN)
        rule_role = iam.Role(self, "RuleRole", assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
                             description=f"neo-edge telemetry rules of the fleet {self.fleet_name}",
                             inline_policies={"Actions": iam.PolicyDocument(statements=[
                                 iam.PolicyStatement(
                                     sid="Firehose", actions=["firehose:PutRecord",
                                                              "firehose:PutRecordBatch"],
                                     resources=[self.results_stream.attr_arn,
                                                self.summaries_stream.attr_arn]),
                                 iam.PolicyStatement(
                                     sid="ErrorAction",
                                     actions=["logs:CreateLogStream", "logs:PutLogEvents",
                                              "logs:DescribeLogStreams"],
                                     resources=[errors.log_group_arn])])})
        error_action = iot.CfnTopicRule.ActionProperty(
            cloudwatch_logs=iot.CfnTopicRule.CloudwatchLogsActionProperty(
                log_group_name=errors.log_group_name, role_arn=rule_role.role_arn))
        # FirehoseAction (botocore iot model): deliveryStreamName, roleArn, separator,
        # batchMode; in batch mode an array result becomes one record per element (500 at most).
        results_sql = (f"SELECT VALUE results FROM '{topic_prefix}/+/+' WHERE "
                       f"(topic(3) = 'results' OR topic(3) = 'errors') AND device = topic(2)")
        self.topic_rule = iot.CfnTopicRule(
            self, "Resource",
            topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                sql=results_sql, aws_iot_sql_version="2016-03-23", rule_disabled=False,
                description=f"neo-edge results of the fleet {self.fleet_name}",
                actions=[iot.CfnTopicRule.ActionProperty(
                    firehose=iot.CfnTopicRule.FirehoseActionProperty(
                        delivery_stream_name=self.results_stream.ref, role_arn=rule_role.role_arn,
                        separator="\n", batch_mode=True))],
                error_action=error_action))
        self.summary_rule = iot.CfnTopicRule(
            self, "SummaryRule",
            topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                sql=f"SELECT *, topic(2) AS device FROM '{topic_prefix}/+/summary'",
                aws_iot_sql_version="2016-03-23", rule_disabled=False,
                description=f"neo-edge summaries of the fleet {self.fleet_name}",
                actions=[iot.CfnTopicRule.ActionProperty(
                    firehose=iot.CfnTopicRule.FirehoseActionProperty(
                        delivery_stream_name=self.summaries_stream.ref, role_arn=rule_role.role_arn,
                        separator="\n", batch_mode=False))],
                error_action=error_action))
        self.rule_errors = errors

        # --- Athena ---------------------------------------------------------------------------
        athena_results = f"s3://{results_bucket.bucket_name}/athena-results/"
        self.workgroup = athena.CfnWorkGroup(
            self, "WorkGroup", name=f"{self.fleet_name}-telemetry",
            description=f"neo-edge telemetry queries of the fleet {self.fleet_name}",
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=100 * 1024 ** 3,
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=athena_results,
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=bucket_key.key_arn)
                    if bucket_key is not None else
                    athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"))))
        self.named_query = athena.CfnNamedQuery(
            self, "P90LatencyQuery", database=db_name, work_group=self.workgroup.ref,
            name="p90 latency per model version per day",
            description="p90 inference latency of each model version, per day, from the results",
            query_string=P90_LATENCY_QUERY.format(database=db_name))

        # Captured inputs: the devices may put objects under the capture prefix.
        role = getattr(fleet, "token_exchange_role", None)
        if role is not None:
            self.grant_capture_upload(role)

        # --- Greengrass events ----------------------------------------------------------------
        # Field names as AWS documents the two events ("Get deployment and component health
        # status notifications", Greengrass V2 developer guide): detail.deploymentId and
        # detail.coreDeviceExecutionStatus; detail.components[].lifecycleState.
        detail: dict = {"coreDeviceExecutionStatus": list(_FAILED_DEPLOYMENT)}
        if deployment is not None:
            detail["deploymentId"] = [deployment.deployment_id]
        self.deployment_failures_rule = events.Rule(
            self, "DeploymentFailures",
            description=f"Greengrass deployments that failed on a device ({self.fleet_name})",
            event_pattern=events.EventPattern(
                source=["aws.greengrass"],
                detail_type=["Greengrass V2 Effective Deployment Status Change"], detail=detail),
            targets=[targets.SnsTopic(alert_topic)])
        self.broken_components_rule = events.Rule(
            self, "BrokenComponents",
            description=f"Greengrass components that broke on a device ({self.fleet_name})",
            event_pattern=events.EventPattern(
                source=["aws.greengrass"],
                detail_type=["Greengrass V2 Installed Component Status Change"],
                detail={"components": {"lifecycleState": list(_BROKEN_COMPONENT)}}),
            targets=[targets.SnsTopic(alert_topic)])

        # --- alarms and dashboard ---------------------------------------------------------------
        action = cw_actions.SnsAction(alert_topic)
        self.alarms: dict = {}

        def alarm(name: str, metric: cw.IMetric, threshold: float, description: str) -> None:
            created = cw.Alarm(
                self, f"{name}Alarm", metric=metric, threshold=threshold, evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING, alarm_description=description)
            created.add_alarm_action(action)
            self.alarms[name] = created

        for i, model in enumerate(self.model_names):
            alarm(f"InferenceErrors{i}", self.metric_inference_errors(model), error_alarm_threshold,
                  f"{model}: {error_alarm_threshold} or more error results in 5 minutes")
            alarm(f"InferenceLatency{i}", self.metric_inference_latency(model),
                  latency_alarm_threshold.to_milliseconds(),
                  f"{model}: p90 latency at or above {latency_alarm_threshold.to_milliseconds()} ms")
            alarm(f"Anomalies{i}", self.metric_anomalies(model), anomaly_alarm_threshold,
                  f"{model}: {anomaly_alarm_threshold} or more anomalies in 5 minutes")
            if low_confidence_alarm_threshold is not None:
                alarm(f"LowConfidence{i}", self.metric_low_confidence(model),
                      low_confidence_alarm_threshold,
                      f"{model}: {low_confidence_alarm_threshold} or more low-confidence results "
                      f"in 5 minutes")
        alarm("FailedDeployments", self.metric_failed_deployments(), 1,
              f"a Greengrass deployment failed on a device of {self.fleet_name}")
        alarm("MetricsErrors", fn.metric_errors(period=cdk.Duration.minutes(5)), 1,
              "the summaries' metrics transform failed (Firehose retries it, then stores the "
              "summaries under the error prefix)")
        self.dashboard = self._dashboard(dashboard_name or f"{self.fleet_name}-fleet")

    # ------------------------------------------------------------------------------
    # Grants

    def grant_capture_upload(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` (a fleet's token exchange role) put captured inputs under the
        capture prefix, and nothing else (``s3:PutObject``, and the bucket key's
        ``kms:GenerateDataKey`` if it has one)."""
        objects = self._bucket.arn_for_objects(f"{self.capture_prefix}/*")
        grant = iam.Grant.add_to_principal(grantee=grantee, actions=["s3:PutObject"],
                                           resource_arns=[objects])
        key = self._bucket.encryption_key
        if key is not None:
            iam.Grant.add_to_principal(grantee=grantee, actions=["kms:GenerateDataKey"],
                                       resource_arns=[key.key_arn])
        principal = getattr(grantee, "node", None)
        if principal is not None:
            acknowledge_wildcards(grantee, [objects],
                                  reason="devices upload captured inputs as new objects (names "
                                         "made on the device) under the capture prefix only")
        return grant

    def capture_destination(self) -> str:
        """What to give the component's ``captureDestination``: ``s3://<bucket>/<capture
        prefix>`` (a token until deploy when the bucket's name is one)."""
        return f"s3://{self._bucket.bucket_name}/{self.capture_prefix}"

    # ------------------------------------------------------------------------------
    # Metrics

    def _metric(self, name: str, model_name: str, statistic: str, options: dict) -> cw.Metric:
        props = dict(namespace=METRICS_NAMESPACE, metric_name=name,
                     dimensions_map={"ModelName": model_name}, statistic=statistic,
                     period=cdk.Duration.minutes(5))
        props.update(options)
        return cw.Metric(**props)

    def metric_inference_latency(self, model_name: str, **options: Any) -> cw.Metric:
        """Inference latency on the devices, in milliseconds. Default: p90 over 5 minutes."""
        return self._metric("InferenceLatency", model_name, "p90", options)

    def metric_inferences(self, model_name: str, **options: Any) -> cw.Metric:
        """Inferences served (error results aside). Default: sum over 5 minutes."""
        return self._metric("Inferences", model_name, "Sum", options)

    def metric_inference_errors(self, model_name: str, **options: Any) -> cw.Metric:
        """Error results (requests a device could not serve). Default: sum over 5 minutes."""
        return self._metric("InferenceErrors", model_name, "Sum", options)

    def metric_confidence(self, model_name: str, **options: Any) -> cw.Metric:
        """The confidence of classification results. Default: average over 5 minutes."""
        return self._metric("Confidence", model_name, "Average", options)

    def metric_low_confidence(self, model_name: str, **options: Any) -> cw.Metric:
        """Results below the devices' low-confidence threshold. Default: sum over 5 minutes."""
        return self._metric("LowConfidence", model_name, "Sum", options)

    def metric_anomalies(self, model_name: str, **options: Any) -> cw.Metric:
        """Anomalies the devices reported. Default: sum over 5 minutes."""
        return self._metric("Anomalies", model_name, "Sum", options)

    def metric_per_version(self, metric_name: str, model_name: str, statistic: str = "Sum",
                           **options: Any) -> cw.MathExpression:
        """One line per model version (a ``SEARCH`` over the ``ModelVersion`` dimension, so
        versions deployed later show up by themselves). Default: 5-minute periods."""
        period = options.pop("period", cdk.Duration.minutes(5))
        query = (f"SEARCH('{{{METRICS_NAMESPACE},ModelName,ModelVersion}} "
                 f"MetricName=\"{metric_name}\" ModelName=\"{model_name}\"', "
                 f"'{statistic}', {int(period.to_seconds())})")
        return cw.MathExpression(expression=query, using_metrics={}, period=period,
                                 label=options.pop("label", ""), **options)

    def metric_failed_deployments(self, **options: Any) -> cw.Metric:
        """Devices on which a Greengrass deployment failed. Default: sum over 5 minutes."""
        return self._events_metric(self.deployment_failures_rule, options)

    def metric_broken_components(self, **options: Any) -> cw.Metric:
        """Components that broke or errored on a device. Default: sum over 5 minutes."""
        return self._events_metric(self.broken_components_rule, options)

    def metric_results_received(self, **options: Any) -> cw.Metric:
        """Result batches the results rule matched. Default: sum over 5 minutes."""
        props = dict(namespace="AWS/IoT", metric_name="TopicMatch",
                     dimensions_map={"RuleName": self.topic_rule.ref}, statistic="Sum",
                     period=cdk.Duration.minutes(5))
        props.update(options)
        return cw.Metric(**props)

    def metric_records_delivered(self, **options: Any) -> cw.Metric:
        """Results Firehose wrote to S3. Default: sum over 5 minutes."""
        props = dict(namespace="AWS/Firehose", metric_name="DeliveryToS3.Records",
                     dimensions_map={"DeliveryStreamName": self.results_stream.ref},
                     statistic="Sum", period=cdk.Duration.minutes(5))
        props.update(options)
        return cw.Metric(**props)

    def _events_metric(self, rule: events.Rule, options: dict) -> cw.Metric:
        props = dict(namespace="AWS/Events", metric_name="MatchedEvents",
                     dimensions_map={"RuleName": rule.rule_name}, statistic="Sum",
                     period=cdk.Duration.minutes(5))
        props.update(options)
        return cw.Metric(**props)

    # ------------------------------------------------------------------------------

    def _dashboard(self, name: str) -> cw.Dashboard:
        models = self.model_names
        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=name,
                                 default_interval=cdk.Duration.hours(3))
        dashboard.add_widgets(cw.TextWidget(
            markdown=f"# neo-edge fleet {self.fleet_name}\nLatency, errors and confidence per "
                     f"model version, from the devices' summaries; deployment state from "
                     f"Greengrass events. Single results: Athena workgroup "
                     f"`{self.fleet_name}-telemetry`, database `{self.database_name}`.",
            width=24, height=2))
        dashboard.add_widgets(
            cw.GraphWidget(title="Inference latency p90 per model version (ms)", width=12, left=[
                self.metric_per_version("InferenceLatency", model, "p90", label=f"{model} ")
                for model in models]),
            cw.GraphWidget(title="Error results per model version", width=12, left=[
                self.metric_per_version("InferenceErrors", model, label=f"{model} ")
                for model in models]))
        dashboard.add_widgets(
            cw.GraphWidget(title="Confidence (average) per model version", width=12, left=[
                self.metric_per_version("Confidence", model, "Average", label=f"{model} ")
                for model in models], left_y_axis=cw.YAxisProps(min=0, max=1)),
            cw.GraphWidget(title="Inferences, low-confidence results and anomalies", width=12,
                           left=[m for model in models for m in (
                               self.metric_inferences(model, label=f"{model} inferences"),
                               self.metric_low_confidence(model, label=f"{model} low confidence"),
                               self.metric_anomalies(model, label=f"{model} anomalies"))]))
        dashboard.add_widgets(
            cw.AlarmStatusWidget(title="Alarms", width=8, alarms=list(self.alarms.values())),
            cw.GraphWidget(title="Deployment state", width=8, left=[
                self.metric_failed_deployments(label="failed deployments"),
                self.metric_broken_components(label="broken components")]),
            cw.GraphWidget(title="Results pipeline", width=8, left=[
                self.metric_results_received(label="result batches received"),
                self.metric_records_delivered(label="results stored"),
                self.summary_metrics.metric_errors(label="metrics transform errors",
                                                   period=cdk.Duration.minutes(5))]))
        return dashboard
