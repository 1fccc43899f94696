"""``EdgeTelemetry``: results from the fleet into S3, metrics, alarms and a dashboard.

Devices publish each inference result to ``<topic_prefix>/<thing>/results`` (and bad
requests to ``.../errors``) on IoT Core. One IoT topic rule takes both:

- the raw message is archived in S3 by the rule itself
  (``<archive_prefix>/device=<thing>/date=<yyyy-MM-dd>/<uuid>.json``), whatever the
  Lambda function does;
- the ``results_processor`` Lambda function stores the result by device and date,
  emits CloudWatch metrics (``InferenceLatency``, ``Confidence``, ``InferenceErrors``,
  ``LowConfidence``, ``Anomalies`` per ``ModelName``) and sends alerts to an SNS topic;
- anything the rule cannot deliver goes to a CloudWatch log group (the error action), and
  the results the processor fails on (after Lambda's retries) to an encrypted SQS queue
  (``failed_results``), with the error.

The ``device`` field is overwritten with the topic's thing name: the fleet's IoT policy
lets a device publish only under its own name, so that field cannot be spoofed.

Greengrass deployment failures on devices (and components that break) arrive as
EventBridge events; rules forward them to the alert topic, and their match counts are
the ``failed deployments`` and ``broken components`` metrics. Alarms on inference
errors, latency, failed deployments and the processor's own errors notify the same
topic, and the dashboard shows all of it on one page.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from ._lambda import bundled_function, keep_failed_invocations
from .fleet import acknowledge_wildcards
from .interfaces import IEdgeDeployment, IEdgeFleet

__all__ = ["EdgeTelemetry", "METRICS_NAMESPACE"]

#: The namespace ``results_processor`` emits its metrics in (``POWERTOOLS_METRICS_NAMESPACE``).
METRICS_NAMESPACE = "NeoEdge"

_FAILED_DEPLOYMENT = ("FAILED", "REJECTED", "TIMED_OUT")
_BROKEN_COMPONENT = ("BROKEN", "ERRORED")


class EdgeTelemetry(Construct):
    """What the fleet reports, stored, measured, alarmed on and shown.

    Parameters
    ----------
    fleet:
        Any :class:`~neo_edge.interfaces.IEdgeFleet` (its ``topic_prefix`` and
        ``fleet_name`` are read): an ``EdgeFleet`` of this stack or another one, or
        ``EdgeFleet.from_thing_group_name(...)``.
    results_bucket:
        Where results are stored (by the function, under ``results_prefix``) and
        archived raw (by the rule, under ``archive_prefix``): any ``s3.IBucket``
        (``s3.Bucket.from_bucket_attributes(..., encryption_key=...)`` for one that
        exists, so that its key is granted too).
    model_names:
        The models whose metrics the alarms and the dashboard show (the ``model_name``
        devices put in their results).
    deployment:
        Only this deployment's failures count: any
        :class:`~neo_edge.interfaces.IEdgeDeployment` (its ``deployment_id`` is read),
        e.g. ``EdgeDeployment.from_deployment_id(...)``. Default: every Greengrass
        deployment failure in the account and region.
    alert_topic:
        Where alerts and alarms go: any ``sns.ITopic``, including an imported one
        (``sns.Topic.from_topic_arn(...)``; if it is encrypted, its key policy must let
        CloudWatch and EventBridge use the key, and pass the key with
        ``sns.Topic.from_topic_attributes(..., key_arn=...)`` so that the function may
        use it). Default: a topic is created, encrypted with a KMS key of its own (rotated)
        and accepting TLS only.
    low_confidence_threshold:
        Results with a lower confidence raise an alert (0 turns it off). Default: 0.5.
    anomaly_threshold:
        Anomaly scores at or above it raise an alert. Default: the device's own
        ``anomaly`` flag decides.
    latency_alarm_threshold:
        Alarm when a model's p90 latency stays above it. Default: 500 ms.
    error_alarm_threshold:
        Alarm when a model has more error results in 5 minutes. Default: 5.
    results_prefix, archive_prefix:
        Key prefixes in ``results_bucket``. Default: ``results`` and ``archive``.
    dashboard_name:
        Default: ``<fleet name>-fleet``.

    Attributes
    ----------
    topic_rule, results_processor, alert_topic, deployment_failures_rule,
    broken_components_rule, dashboard, alarms (name to ``cloudwatch.Alarm``)
    """

    def __init__(self, scope: Construct, id: str, *, fleet: IEdgeFleet, results_bucket: s3.IBucket,
                 model_names: Sequence[str], deployment: Optional[IEdgeDeployment] = None,
                 alert_topic: Optional[sns.ITopic] = None,
                 low_confidence_threshold: float = 0.5,
                 anomaly_threshold: Optional[float] = None,
                 latency_alarm_threshold: cdk.Duration = cdk.Duration.millis(500),
                 error_alarm_threshold: int = 5, results_prefix: str = "results",
                 archive_prefix: str = "archive", dashboard_name: Optional[str] = None) -> None:
        super().__init__(scope, id)
        if not model_names:
            raise ValueError("model_names must name at least one model; got none")
        if len(set(model_names)) != len(model_names):
            raise ValueError(f"model_names must not repeat; got {', '.join(model_names)}")
        if not 0 <= low_confidence_threshold <= 1:
            raise ValueError(f"low_confidence_threshold must be from 0 to 1; "
                             f"got {low_confidence_threshold!r}")
        if error_alarm_threshold < 1:
            raise ValueError(f"error_alarm_threshold must be at least 1; got {error_alarm_threshold!r}")
        for what, prefix in (("results_prefix", results_prefix), ("archive_prefix", archive_prefix)):
            if not prefix or prefix.startswith("/") or prefix.endswith("/") or "*" in prefix:
                raise ValueError(f"{what} must be a key prefix without a leading or trailing '/' "
                                 f"or '*'; got {prefix!r}")
        if results_prefix == archive_prefix:
            raise ValueError(f"results_prefix and archive_prefix must differ; got {results_prefix!r} "
                             f"for both")
        topic_prefix = getattr(fleet, "topic_prefix", None)
        if not topic_prefix:
            raise ValueError(f"fleet must be an EdgeFleet (an object with topic_prefix); got {fleet!r}")
        stack = cdk.Stack.of(self)
        self.model_names = list(model_names)
        self.fleet_name = str(getattr(fleet, "fleet_name", "neo-edge"))

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

        # --- the results processor ----------------------------------------------------
        environment = {
            "RESULTS_BUCKET": results_bucket.bucket_name,
            "RESULTS_PREFIX": results_prefix,
            "ALERT_TOPIC_ARN": alert_topic.topic_arn,
            "LOW_CONFIDENCE_THRESHOLD": str(low_confidence_threshold),
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }
        if anomaly_threshold is not None:
            environment["ANOMALY_THRESHOLD"] = str(anomaly_threshold)
        fn = bundled_function(self, "ResultsProcessor", "results_processor",
                              environment=environment, timeout=cdk.Duration.seconds(30),
                              description=f"neo-edge results of the fleet {self.fleet_name}")
        self.results_processor = fn
        #: Results the processor failed on (after Lambda's retries), with the error.
        self.failed_results = keep_failed_invocations(fn, "FailedResults")
        results_objects = results_bucket.arn_for_objects(f"{results_prefix}/*")
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="StoreResults", actions=["s3:GetObject", "s3:PutObject"],
            resources=[results_objects]))
        # HeadObject on a missing key answers 404 (not 403) only with ListBucket.
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="SeeMissingResults", actions=["s3:ListBucket"], resources=[results_bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{results_prefix}/*"]}}))
        if results_bucket.encryption_key is not None:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="ResultsKey", actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[results_bucket.encryption_key.key_arn]))
        # Exact actions rather than grant_publish (which adds kms:GenerateDataKey*).
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="Alert", actions=["sns:Publish"], resources=[alert_topic.topic_arn]))
        topic_key = getattr(alert_topic, "master_key", None)
        if topic_key is not None:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="AlertKey", actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[topic_key.key_arn]))
        acknowledge_wildcards(
            fn.role, [results_objects],
            reason="the function stores one object per result under the results prefix (keys "
                   "made of device, date and request id at run time) and reads it back to stay "
                   "idempotent; it may touch nothing else in the bucket")

        # --- the topic rule -----------------------------------------------------------------
        errors = logs.LogGroup(self, "RuleErrors", retention=logs.RetentionDays.THREE_MONTHS,
                               removal_policy=cdk.RemovalPolicy.RETAIN)
        archive_objects = results_bucket.arn_for_objects(f"{archive_prefix}/*")
        statements = [
            iam.PolicyStatement(sid="Archive", actions=["s3:PutObject"], resources=[archive_objects]),
            iam.PolicyStatement(sid="ErrorAction",
                                actions=["logs:CreateLogStream", "logs:PutLogEvents",
                                         "logs:DescribeLogStreams"],
                                resources=[errors.log_group_arn]),
        ]
        if results_bucket.encryption_key is not None:
            statements.append(iam.PolicyStatement(
                sid="ArchiveKey", actions=["kms:GenerateDataKey"],
                resources=[results_bucket.encryption_key.key_arn]))
        # Inline, so that the rule's reference to the role also waits for its permissions.
        rule_role = iam.Role(self, "RuleRole", assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
                             description=f"neo-edge results rule of the fleet {self.fleet_name}",
                             inline_policies={"Actions": iam.PolicyDocument(statements=statements)})
        acknowledge_wildcards(
            rule_role, [archive_objects],
            reason="the rule archives each message as a new object under the archive prefix "
                   "(a key with the device, the date and a fresh uuid); it may only put objects "
                   "there")
        sql = (f"SELECT *, topic(2) AS device FROM '{topic_prefix}/+/+' "
               f"WHERE topic(3) = 'results' OR topic(3) = 'errors'")
        self.topic_rule = iot.CfnTopicRule(
            self, "Resource",
            topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                sql=sql, aws_iot_sql_version="2016-03-23", rule_disabled=False,
                description=f"neo-edge results of the fleet {self.fleet_name}",
                actions=[
                    iot.CfnTopicRule.ActionProperty(lambda_=iot.CfnTopicRule.LambdaActionProperty(
                        function_arn=fn.function_arn)),
                    iot.CfnTopicRule.ActionProperty(s3=iot.CfnTopicRule.S3ActionProperty(
                        bucket_name=results_bucket.bucket_name, role_arn=rule_role.role_arn,
                        key=(f"{archive_prefix}/device=${{topic(2)}}/"
                             f"date=${{parse_time(\"yyyy-MM-dd\", timestamp())}}/"
                             f"${{topic(3)}}-${{newuuid()}}.json"))),
                ],
                error_action=iot.CfnTopicRule.ActionProperty(
                    cloudwatch_logs=iot.CfnTopicRule.CloudwatchLogsActionProperty(
                        log_group_name=errors.log_group_name, role_arn=rule_role.role_arn)),
            ))
        self.rule_errors = errors
        fn.add_permission("InvokeFromTopicRule", principal=iam.ServicePrincipal("iot.amazonaws.com"),
                          source_arn=self.topic_rule.attr_arn, source_account=stack.account)

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
        alarm("FailedDeployments", self.metric_failed_deployments(), 1,
              f"a Greengrass deployment failed on a device of {self.fleet_name}")
        alarm("ProcessorErrors", fn.metric_errors(period=cdk.Duration.minutes(5)), 1,
              "the results processor failed (after retries, the results it failed on are kept "
              "in the failed-results queue)")
        self.dashboard = self._dashboard(dashboard_name or f"{self.fleet_name}-fleet")

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

    def metric_inference_errors(self, model_name: str, **options: Any) -> cw.Metric:
        """Error results (requests a device could not serve). Default: sum over 5 minutes."""
        return self._metric("InferenceErrors", model_name, "Sum", options)

    def metric_confidence(self, model_name: str, **options: Any) -> cw.Metric:
        """The confidence of classification results. Default: average over 5 minutes."""
        return self._metric("Confidence", model_name, "Average", options)

    def metric_low_confidence(self, model_name: str, **options: Any) -> cw.Metric:
        """Results below the low-confidence threshold. Default: sum over 5 minutes."""
        return self._metric("LowConfidence", model_name, "Sum", options)

    def metric_anomalies(self, model_name: str, **options: Any) -> cw.Metric:
        """Anomaly alerts. Default: sum over 5 minutes."""
        return self._metric("Anomalies", model_name, "Sum", options)

    def metric_failed_deployments(self, **options: Any) -> cw.Metric:
        """Devices on which a Greengrass deployment failed. Default: sum over 5 minutes."""
        return self._events_metric(self.deployment_failures_rule, options)

    def metric_broken_components(self, **options: Any) -> cw.Metric:
        """Components that broke or errored on a device. Default: sum over 5 minutes."""
        return self._events_metric(self.broken_components_rule, options)

    def metric_results_received(self, **options: Any) -> cw.Metric:
        """Messages the topic rule matched. Default: sum over 5 minutes."""
        props = dict(namespace="AWS/IoT", metric_name="TopicMatch",
                     dimensions_map={"RuleName": self.topic_rule.ref}, statistic="Sum",
                     period=cdk.Duration.minutes(5))
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
            markdown=f"# neo-edge fleet {self.fleet_name}\nLatency, errors and confidence as the "
                     f"devices report them; deployment state from Greengrass events.",
            width=24, height=2))
        dashboard.add_widgets(
            cw.GraphWidget(title="Inference latency p50 / p90 (ms)", width=12, left=[
                m for model in models for m in (
                    self.metric_inference_latency(model, statistic="p50", label=f"{model} p50"),
                    self.metric_inference_latency(model, label=f"{model} p90"))]),
            cw.GraphWidget(title="Error results", width=12, left=[
                self.metric_inference_errors(model, label=model) for model in models]))
        dashboard.add_widgets(
            cw.GraphWidget(title="Confidence (average)", width=12, left=[
                self.metric_confidence(model, label=model) for model in models],
                left_y_axis=cw.YAxisProps(min=0, max=1)),
            cw.GraphWidget(title="Low-confidence and anomaly alerts", width=12, left=[
                m for model in models for m in (
                    self.metric_low_confidence(model, label=f"{model} low confidence"),
                    self.metric_anomalies(model, label=f"{model} anomalies"))]))
        dashboard.add_widgets(
            cw.AlarmStatusWidget(title="Alarms", width=8, alarms=list(self.alarms.values())),
            cw.GraphWidget(title="Deployment state", width=8, left=[
                self.metric_failed_deployments(label="failed deployments"),
                self.metric_broken_components(label="broken components")]),
            cw.GraphWidget(title="Results pipeline", width=8, left=[
                self.metric_results_received(label="results received"),
                self.results_processor.metric_errors(label="processor errors",
                                                     period=cdk.Duration.minutes(5))]))
        return dashboard
