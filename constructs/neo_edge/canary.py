"""``CanaryRollout``: a new component version to a canary group first, then, on the canary
devices' own verdicts, to the fleet; otherwise stop, leave the fleet alone, and notify.

Greengrass aborts a rollout on the share of devices whose deployment *failed*; a model that
installs and starts but answers worse is a success to it. The devices judge that
themselves (``neo_edge_runtime.rollout``: a shadow trial beside the current model, then a
health watch after promotion) and publish each decision on
``<topic_prefix>/<thing>/rollout``. This construct gates the fleet on those decisions.

How the devices' reports reach the state machine, and why this way:

- the **reports rule** (IoT SQL ``SELECT *, topic(2) AS device, ...``) writes each decision
  that carries a ``rollout_id`` into the ``reports`` DynamoDB table with the
  ``dynamoDBv2`` action (each top-level key of the message an attribute), keyed by
  ``rollout_id`` (partition) and ``device`` (sort). A device's later decision replaces its
  earlier one (``promote`` is followed by ``healthy`` or ``rollback``), so the table holds
  each canary device's latest verdict. The device name comes from the topic, which the
  fleet's IoT policy lets a device publish under its own name only. Items expire after 30
  days (``expires_at``, the table's TTL attribute).
- the state machine sets ``rolloutId`` (its execution name) in the component's
  configuration through the canary deployment (``configurationUpdate.merge``), so the
  devices tag their decisions with it and the state machine reads its own rollout only,
  however often the same model version is rolled out;
- the state machine counts the verdicts with AWS SDK ``dynamodb:query`` tasks (``Select:
  COUNT`` with a filter on ``decision``): no function of ours between the table and the
  decision, and moto's DynamoDB answers the same calls in the tests, fed with the items the
  rule would write. (A query page is 1 MB of items: thousands of canary devices.)

The state machine (AWS SDK tasks and the ``deployment_manager`` function; no ``.sync``
integration):

``Name the rollout`` -> ``Deploy to the canary group`` -> poll ``Check the canary
deployment`` until done -> ``Wait for canary reports`` -> ``Count healthy canaries``,
``Count failed canaries`` -> ``Add up the canary reports`` -> ``Did the canary pass?``:
more failures than ``max_canary_failures`` -> ``Canary rejected``; every canary device
reported -> ``Deploy to the fleet`` -> poll -> ``Rolled out to the fleet``; too many polls ->
``Canary reports incomplete``; otherwise wait again. A stop publishes to the alert topic
(``neo-edge canary rollout stopped``) and fails the execution with its error
(``CanaryRejected``, ``CanaryReportsIncomplete``, ``DeploymentTimedOut``, or the
deployment function's own). The fleet's thing group is never deployed to on a stop: it stays
on the version it runs.

Execution input: ``{"component_name": "com.example.Digits", "component_version": "1.0.7"}``.

The canary group must not hold devices of the fleet's group: a device in two thing groups
whose deployments ask for different versions of one component fails its deployment
(Greengrass resolves a device's component versions across all its groups: "Component
dependency resolution", https://docs.aws.amazon.com/greengrass/v2/developerguide/
manage-deployments.html). Canary devices stay in their group after a pass, on the same
version as the fleet.

Per-version figures: the **events rule** sends every decision (with or without a rollout id)
to the ``events`` log group, whose metric filters make ``ShadowDecisions`` and
``HealthDecisions`` (dimensions ``ModelName``, ``ModelVersion``, ``Decision``),
``ShadowAgreement``, ``ShadowCandidateErrorRate``, ``ShadowCandidateLatencyP90`` and
``ShadowCurrentLatencyP90`` (``ModelName``, ``ModelVersion``: the version on trial) and
``RolloutFailures`` (rejections and rollbacks, no dimension, alarmed on), in the
``NeoEdge`` namespace beside the devices' summaries. They are graphed per model version on
the dashboard given (``EdgeTelemetry.dashboard``) or one of the construct's own.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from . import _checkov
from ._lambda import allow_redundant_depends_on, bundled_function
from ._nag import acknowledge_state_machine_role
from .fleet import acknowledge_wildcards
from .interfaces import IEdgeFleet

__all__ = ["CanaryRollout", "REPORT_TTL_SECONDS", "ROLLOUT_METRICS", "canary_states",
           "grant_deploy"]

#: How long a device's report stays in the reports table.
REPORT_TTL_SECONDS = 30 * 24 * 3600
#: The namespace of the rollout metrics: the one the devices' summaries go to
#: (``neo_edge.telemetry.METRICS_NAMESPACE``).
_NAMESPACE = "NeoEdge"
#: Metric name -> (filter pattern, value, dimensions): the events log group's metric filters.
#: A value taken from a field needs the field in the pattern, if only as ``$.field = *``
#: (aws-cdk-lib, aws_logs.MetricFilterProps ``metric_value``).
_VERSION_DIMENSIONS = {"ModelName": "$.model_name", "ModelVersion": "$.model_version"}
ROLLOUT_METRICS = {
    "ShadowDecisions": ('{ $.event = "shadow" }', "1",
                        {**_VERSION_DIMENSIONS, "Decision": "$.decision"}),
    "HealthDecisions": ('{ $.event = "health" }', "1",
                        {**_VERSION_DIMENSIONS, "Decision": "$.decision"}),
    "ShadowAgreement": ('{ $.event = "shadow" && $.figures.agreement = * }',
                        "$.figures.agreement", _VERSION_DIMENSIONS),
    "ShadowCandidateErrorRate": ('{ $.event = "shadow" && $.figures.error_rate_candidate = * }',
                                 "$.figures.error_rate_candidate", _VERSION_DIMENSIONS),
    "ShadowCandidateLatencyP90": (
        '{ $.event = "shadow" && $.figures.latency_p90_candidate_ms = * }',
        "$.figures.latency_p90_candidate_ms", _VERSION_DIMENSIONS),
    "ShadowCurrentLatencyP90": (
        '{ $.event = "shadow" && $.figures.latency_p90_current_ms = * }',
        "$.figures.latency_p90_current_ms", _VERSION_DIMENSIONS),
    "RolloutFailures": ('{ $.decision = "reject" || $.decision = "rollback" }', "1", {}),
}


def grant_deploy(fn: lambda_.IFunction, fleet: IEdgeFleet) -> None:
    """What ``deployment_manager`` needs to deploy to ``fleet`` and follow the deployment."""
    stack = cdk.Stack.of(fn)
    fleet.grant_deploy(fn)
    core_devices = stack.format_arn(service="greengrass", resource="coreDevices",
                                    resource_name="*", arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
    fn.add_to_role_policy(iam.PolicyStatement(
        sid="FollowDevices", actions=["greengrass:ListEffectiveDeployments"],
        resources=[core_devices]))
    fn.add_to_role_policy(iam.PolicyStatement(
        sid="ListFleetDevices", actions=["greengrass:ListCoreDevices"], resources=["*"]))
    acknowledge_wildcards(
        fn.role, ["*"], reason="greengrass:ListCoreDevices supports no resource-level "
                               "permissions; the function lists the core devices of its thing "
                               "group only")
    acknowledge_wildcards(
        fn.role, [core_devices, stack.format_arn(service="iot", resource="thing", resource_name="*"),
                  stack.format_arn(service="iot", resource="job", resource_name="*"),
                  stack.format_arn(service="greengrass", resource="deployments",
                                   resource_name="*",
                                   arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)],
        reason="a Greengrass deployment creates an IoT job with a generated id for the thing "
               "group and runs on whichever core devices are in the group; their ids are known "
               "only at run time. The thing group itself is named exactly")


def canary_states(scope: Construct, *, canary_deployer: lambda_.IFunction,
                  fleet_deployer: lambda_.IFunction, table: dynamodb.ITable,
                  poll_interval: cdk.Duration, deployment_timeout: cdk.Duration,
                  report_timeout: cdk.Duration, max_canary_failures: int,
                  device_configuration: Mapping[str, Any], notify: sfn.IChainable,
                  component_path: str = "$", rollout_id: str = "$$.Execution.Name",
                  done: Optional[sfn.IChainable] = None) -> sfn.Chain:
    """The canary-then-fleet states (see the module documentation), as a chain.

    ``notify`` is where a stop goes, with ``$.error`` holding ``{"Error", "Cause"}``; it
    must publish and fail. ``component_path`` is where ``component_name`` and
    ``component_version`` are in the state. ``done`` ends a pass. Default: a ``Succeed``
    state, ``Rolled out to the fleet``.
    """
    interval_s = max(1, int(poll_interval.to_seconds()))
    deployment_polls = max(1, math.ceil(int(deployment_timeout.to_seconds()) / interval_s))
    report_polls = max(1, math.ceil(int(report_timeout.to_seconds()) / interval_s))
    retry = dict(errors=["RetryableError"], interval=cdk.Duration.seconds(10), max_attempts=6,
                 backoff_rate=2)

    def catch(state: sfn.TaskStateBase) -> sfn.TaskStateBase:
        state.add_catch(notify, errors=[sfn.Errors.ALL], result_path="$.error")
        return state

    def give_up(name: str, error: str, cause: str) -> sfn.Pass:
        return sfn.Pass(scope, name, result_path="$.error",
                        result=sfn.Result.from_object({"Error": error, "Cause": cause}))

    def invoke(name: str, fn: lambda_.IFunction, payload: dict, path: str) -> tasks.LambdaInvoke:
        task = tasks.LambdaInvoke(
            scope, name, lambda_function=fn, payload=sfn.TaskInput.from_object(payload),
            result_path=path, result_selector={
                "deployment_id": sfn.JsonPath.string_at("$.Payload.deployment_id"),
                "done": sfn.JsonPath.string_at("$.Payload.done"),
                "succeeded": sfn.JsonPath.number_at("$.Payload.succeeded"),
                "failed": sfn.JsonPath.number_at("$.Payload.failed")}
            if name.startswith("Check") else {
                "deployment_id": sfn.JsonPath.string_at("$.Payload.deployment_id"),
                "done": sfn.JsonPath.string_at("$.Payload.done")})
        task.add_retry(**retry)
        return catch(task)

    merge = {**dict(device_configuration), "rolloutId": sfn.JsonPath.string_at("$.rollout.id")}

    def deploy(name: str, fn: lambda_.IFunction, path: str) -> tasks.LambdaInvoke:
        return invoke(name, fn, {
            "action": "deploy",
            "component_name": sfn.JsonPath.string_at(f"{component_path}.component_name"),
            "component_version": sfn.JsonPath.string_at(f"{component_path}.component_version"),
            "configuration_merge": merge,
            "request_token": sfn.JsonPath.format("{}-{}", sfn.JsonPath.string_at("$.rollout.id"),
                                                 path.rsplit(".", 1)[-1])}, path)

    def poll(what: str, path: str, on_done: sfn.IChainable, fn: lambda_.IFunction) -> sfn.IChainable:
        counter = f"$.polls_{path.rsplit('.', 1)[-1]}"
        check = invoke(f"Check the {what} deployment", fn, {
            "action": "status",
            "deployment_id": sfn.JsonPath.string_at(f"{path}.deployment_id")}, path)
        start = sfn.Pass(scope, f"Start polling the {what} deployment", result_path=counter,
                         result=sfn.Result.from_object({"attempts": 0}))
        wait = sfn.Wait(scope, f"Wait for the {what} deployment",
                        time=sfn.WaitTime.duration(poll_interval))
        count = sfn.Pass(scope, f"Count polls of the {what} deployment", result_path=counter,
                         parameters={"attempts": sfn.JsonPath.math_add(
                             sfn.JsonPath.number_at(f"{counter}.attempts"), 1)})
        ask = (sfn.Choice(scope, f"Is the {what} deployment done?")
               .when(sfn.Condition.boolean_equals(f"{path}.done", True), on_done)
               .when(sfn.Condition.number_greater_than_equals(f"{counter}.attempts",
                                                               deployment_polls),
                     give_up(f"The {what} deployment took too long", "DeploymentTimedOut",
                             f"devices of the {what} group were still taking the deployment "
                             f"after {deployment_polls} polls {interval_s} seconds apart"
                             ).next(notify))
               .otherwise(wait))
        wait.next(count).next(check).next(ask)
        return start.next(ask)

    def count(name: str, decisions: tuple, path: str) -> tasks.CallAwsService:
        values = {f":d{i}": {"S": d} for i, d in enumerate(decisions)}
        task = tasks.CallAwsService(
            scope, name, service="dynamodb", action="query",
            iam_action="dynamodb:Query", iam_resources=[table.table_arn],
            parameters={
                "TableName": table.table_name,
                "KeyConditionExpression": "rollout_id = :r",
                "FilterExpression": f"decision IN ({', '.join(values)})",
                "ExpressionAttributeValues": {
                    ":r": {"S": sfn.JsonPath.string_at("$.rollout.id")}, **values},
                "Select": "COUNT", "ConsistentRead": True},
            result_selector={"count": sfn.JsonPath.number_at("$.Count")}, result_path=path)
        task.add_retry(errors=["DynamoDb.ProvisionedThroughputExceededException",
                               "DynamoDb.ThrottlingException", "DynamoDb.InternalServerErrorException"],
                       interval=cdk.Duration.seconds(5), max_attempts=5, backoff_rate=2)
        return catch(task)

    name = sfn.Pass(scope, "Name the rollout", result_path="$.rollout",
                    parameters={"id": sfn.JsonPath.string_at(rollout_id)})
    to_canary = deploy("Deploy to the canary group", canary_deployer, "$.canary")
    to_fleet = deploy("Deploy to the fleet", fleet_deployer, "$.fleet")
    finished = done or sfn.Succeed(scope, "Rolled out to the fleet")

    start_reports = sfn.Pass(scope, "Start reading canary reports", result_path="$.polls_reports",
                             result=sfn.Result.from_object({"attempts": 0}))
    wait = sfn.Wait(scope, "Wait for canary reports", time=sfn.WaitTime.duration(poll_interval))
    healthy = count("Count healthy canaries", ("healthy",), "$.reports.healthy")
    failed = count("Count failed canaries", ("reject", "rollback"), "$.reports.failed")
    add_up = sfn.Pass(scope, "Add up the canary reports", result_path="$.reports.summary",
                      parameters={
                          "healthy": sfn.JsonPath.number_at("$.reports.healthy.count"),
                          "failed": sfn.JsonPath.number_at("$.reports.failed.count"),
                          "reported": sfn.JsonPath.math_add(
                              sfn.JsonPath.number_at("$.reports.healthy.count"),
                              sfn.JsonPath.number_at("$.reports.failed.count")),
                          "devices": sfn.JsonPath.number_at("$.canary.succeeded"),
                          "attempts": sfn.JsonPath.math_add(
                              sfn.JsonPath.number_at("$.polls_reports.attempts"), 1)})
    keep_count = sfn.Pass(scope, "Count polls of canary reports", result_path="$.polls_reports",
                          parameters={"attempts": sfn.JsonPath.number_at(
                              "$.reports.summary.attempts")})
    rejected = sfn.Pass(scope, "Canary rejected", result_path="$.error", parameters={
        "Error": "CanaryRejected",
        "Cause": sfn.JsonPath.format(
            f"{{}} of {{}} canary devices rejected the new version in shadow or rolled it back "
            f"(at most {max_canary_failures} may); the fleet stays on the version it runs. "
            f"Rollout {{}}: the decisions and their figures are in the reports table",
            sfn.JsonPath.string_at("$.reports.summary.failed"),
            sfn.JsonPath.string_at("$.reports.summary.devices"),
            sfn.JsonPath.string_at("$.rollout.id"))})
    incomplete = sfn.Pass(scope, "Canary reports incomplete", result_path="$.error", parameters={
        "Error": "CanaryReportsIncomplete",
        "Cause": sfn.JsonPath.format(
            f"after {report_polls} polls {interval_s} seconds apart, {{}} of {{}} canary devices "
            f"had reported healthy and {{}} failed; the fleet stays on the version it runs "
            f"(rollout {{}})",
            sfn.JsonPath.string_at("$.reports.summary.healthy"),
            sfn.JsonPath.string_at("$.reports.summary.devices"),
            sfn.JsonPath.string_at("$.reports.summary.failed"),
            sfn.JsonPath.string_at("$.rollout.id"))})
    decide = (sfn.Choice(scope, "Did the canary pass?")
              .when(sfn.Condition.number_greater_than("$.reports.summary.failed",
                                                      max_canary_failures),
                    rejected.next(notify))
              .when(sfn.Condition.and_(
                  sfn.Condition.number_greater_than("$.reports.summary.devices", 0),
                  sfn.Condition.number_greater_than_equals_json_path(
                      "$.reports.summary.reported", "$.reports.summary.devices")),
                  to_fleet)
              .when(sfn.Condition.number_greater_than_equals("$.reports.summary.attempts",
                                                             report_polls),
                    incomplete.next(notify))
              .otherwise(keep_count.next(wait)))
    wait.next(healthy).next(failed).next(add_up).next(decide)
    to_fleet.next(poll("fleet", "$.fleet", finished, fleet_deployer))
    to_canary.next(poll("canary", "$.canary", start_reports.next(wait), canary_deployer))
    return sfn.Chain.start(name).next(to_canary)


class CanaryRollout(Construct):
    """Deploy a component version to a canary group, gate the fleet on the canary devices'
    shadow and health decisions, and notify on a stop (see the module documentation).

    Parameters
    ----------
    fleet:
        The fleet (any :class:`~neo_edge.interfaces.IEdgeFleet`) that gets the version once
        the canary passed. Its ``topic_prefix`` is where the devices publish decisions.
    canary_fleet:
        The canary devices' own thing group (an ``EdgeFleet`` of its own, or
        ``EdgeFleet.from_thing_group_name``); none of its devices may be in ``fleet``'s
        group. It must share ``fleet``'s ``topic_prefix``.
    device_configuration:
        Merged into the component's configuration on the canary and then the fleet
        devices, with ``rolloutId``. Default: ``{"shadowShare": 0.25}``: shadow trials
        on a quarter of the requests (the component's own default is off, and a canary
        device without trials has nothing to report).
    max_canary_failures:
        Canary devices that may reject or roll back the version with the fleet still
        getting it. Default: 0.
    poll_interval:
        How often deployments and reports are polled. Default: 1 minute.
    deployment_timeout:
        How long each deployment (canary, fleet) may take to reach its devices before the
        rollout stops. Default: 1 hour.
    report_timeout:
        How long, after the canary deployment, every canary device has to report its final
        verdict (its shadow trial plus its health watch) before the rollout stops.
        Default: 3 hours.
    alert_topic:
        Where stops are reported. Default: a topic is created, encrypted with a KMS key of
        its own, TLS only.
    dashboard:
        A dashboard to add the rollout graphs to (``EdgeTelemetry.dashboard``). Default: a
        dashboard of the construct's own, ``<fleet name>-rollouts``.
    timeout:
        The longest a rollout may take. Default: 12 hours.

    Attributes
    ----------
    state_machine, reports_table, reports_rule, events_rule, events_log_group,
    canary_deployer, fleet_deployer, alert_topic, alarm, dashboard
    """

    def __init__(self, scope: Construct, id: str, *, fleet: IEdgeFleet, canary_fleet: IEdgeFleet,
                 device_configuration: Optional[Mapping[str, Any]] = None,
                 max_canary_failures: int = 0,
                 poll_interval: cdk.Duration = cdk.Duration.minutes(1),
                 deployment_timeout: cdk.Duration = cdk.Duration.hours(1),
                 report_timeout: cdk.Duration = cdk.Duration.hours(3),
                 alert_topic: Optional[sns.ITopic] = None,
                 dashboard: Optional[cw.Dashboard] = None,
                 timeout: cdk.Duration = cdk.Duration.hours(12)) -> None:
        super().__init__(scope, id)
        for name, value in (("fleet", fleet), ("canary_fleet", canary_fleet)):
            if not hasattr(value, "thing_group_arn") or not hasattr(value, "grant_deploy"):
                raise ValueError(f"{name} must be an EdgeFleet (thing_group_arn, grant_deploy); "
                                 f"got {value!r}")
        stack = cdk.Stack.of(self)
        if stack.resolve(fleet.thing_group_arn) == stack.resolve(canary_fleet.thing_group_arn):
            raise ValueError(f"canary_fleet must be a thing group of its own, not the fleet's "
                             f"({getattr(fleet, 'fleet_name', fleet)}): a device in both would get "
                             f"two versions of the component")
        prefix = getattr(fleet, "topic_prefix", "neo-edge")
        canary_prefix = getattr(canary_fleet, "topic_prefix", prefix)
        if canary_prefix != prefix:
            raise ValueError(f"canary_fleet must publish under the fleet's topic prefix "
                             f"{prefix!r}; got {canary_prefix!r}")
        if isinstance(max_canary_failures, bool) or not isinstance(max_canary_failures, int) \
                or max_canary_failures < 0:
            raise ValueError(f"max_canary_failures must be a whole number >= 0; "
                             f"got {max_canary_failures!r}")
        for name, value, low, high in (("poll_interval", poll_interval, 1, 3600),
                                       ("deployment_timeout", deployment_timeout, 1, 7 * 86400),
                                       ("report_timeout", report_timeout, 1, 7 * 86400)):
            seconds = value.to_seconds()
            if not cdk.Token.is_unresolved(seconds) and not low <= seconds <= high:
                raise ValueError(f"{name} must be from {low} to {high} seconds; got {seconds}")
        configuration = dict({"shadowShare": 0.25} if device_configuration is None
                             else device_configuration)
        if "rolloutId" in configuration:
            raise ValueError("device_configuration must not set rolloutId: each rollout sets "
                             "its own (the execution name)")
        from neo_edge_runtime.compile import recipe

        unknown = sorted(set(configuration) - set(recipe.INFERENCE_DEFAULTS))
        if unknown:
            raise ValueError(f"device_configuration keys must be inference configuration keys "
                             f"({', '.join(recipe.INFERENCE_DEFAULTS)}); got {', '.join(unknown)}")
        self.fleet, self.canary_fleet = fleet, canary_fleet
        self._settings = dict(poll_interval=poll_interval, deployment_timeout=deployment_timeout,
                              report_timeout=report_timeout,
                              max_canary_failures=max_canary_failures,
                              device_configuration=configuration)
        fleet_name = getattr(fleet, "fleet_name", None) or "neo-edge"

        # --- the devices' reports ------------------------------------------------------
        self.reports_table = dynamodb.Table(
            self, "Reports",
            partition_key=dynamodb.Attribute(name="rollout_id", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="device", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            time_to_live_attribute="expires_at",
            # Reports are evidence for one rollout, kept 30 days: nothing to keep past the stack.
            removal_policy=cdk.RemovalPolicy.DESTROY)
        self.events_log_group = logs.LogGroup(self, "Events", retention=logs.RetentionDays.ONE_YEAR,
                                              removal_policy=cdk.RemovalPolicy.RETAIN)
        rule_role = iam.Role(self, "RulesRole", assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
                             description="neo-edge rollout rules: device decisions to the reports "
                                         "table and the events log group")
        rule_role.add_to_policy(iam.PolicyStatement(actions=["dynamodb:PutItem"],
                                                    resources=[self.reports_table.table_arn]))
        rule_role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
            resources=[self.events_log_group.log_group_arn]))
        error_action = iot.CfnTopicRule.ActionProperty(
            cloudwatch_logs=iot.CfnTopicRule.CloudwatchLogsActionProperty(
                log_group_name=self.events_log_group.log_group_name, role_arn=rule_role.role_arn))
        topic = f"{prefix}/+/rollout"
        self.reports_rule = iot.CfnTopicRule(self, "ReportsRule", topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
            description="neo-edge: canary devices' rollout decisions, per rollout and device",
            sql=(f"SELECT *, topic(2) AS device, floor(timestamp() / 1000) + {REPORT_TTL_SECONDS} "
                 f"AS expires_at FROM '{topic}' WHERE rollout_id <> ''"),
            aws_iot_sql_version="2016-03-23", rule_disabled=False,
            actions=[iot.CfnTopicRule.ActionProperty(dynamo_d_bv2=iot.CfnTopicRule.DynamoDBv2ActionProperty(
                role_arn=rule_role.role_arn,
                put_item=iot.CfnTopicRule.PutItemInputProperty(
                    table_name=self.reports_table.table_name)))],
            error_action=error_action))
        self.events_rule = iot.CfnTopicRule(self, "EventsRule", topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
            description="neo-edge: every rollout decision of the fleet, for metrics",
            sql=f"SELECT *, topic(2) AS device FROM '{topic}'",
            aws_iot_sql_version="2016-03-23", rule_disabled=False,
            actions=[error_action]))
        for metric, (pattern, value, dimensions) in ROLLOUT_METRICS.items():
            logs.MetricFilter(self, f"{metric}Filter", log_group=self.events_log_group,
                              metric_namespace=_NAMESPACE, metric_name=metric,
                              filter_pattern=logs.FilterPattern.literal(pattern),
                              metric_value=value, dimensions=dict(dimensions) or None)

        # --- alerts ----------------------------------------------------------------------
        if alert_topic is None:
            key = kms.Key(self, "AlertKey", enable_key_rotation=True,
                          description=f"neo-edge rollout alerts {self.node.path}")
            alert_topic = sns.Topic(self, "Alerts", master_key=key, enforce_ssl=True,
                                    display_name="neo-edge rollout alerts")
        self.alert_topic = alert_topic
        self.alarm = cw.Alarm(
            self, "RolloutFailuresAlarm", metric=self.metric_rollout_failures(), threshold=1,
            evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=f"a device of {fleet_name} rejected a model version in shadow or "
                              f"rolled one back")
        self.alarm.add_alarm_action(cw_actions.SnsAction(alert_topic))

        # --- the deployers -----------------------------------------------------------------
        self.canary_deployer = self._deployer("CanaryDeployer", canary_fleet, "the canary group")
        self.fleet_deployer = self._deployer("FleetDeployer", fleet, "the fleet")

        # --- the state machine -------------------------------------------------------------
        failed = sfn.Fail(self, "Rollout stopped", error_path="$.error.Error",
                          cause_path="$.error.Cause")
        notify = tasks.SnsPublish(
            self, "Notify the stop", topic=alert_topic, subject="neo-edge canary rollout stopped",
            message=sfn.TaskInput.from_json_path_at("States.Format('Rollout {} of {} {}: {}: {}', "
                                                    "$$.Execution.Name, $.component_name, "
                                                    "$.component_version, $.error.Error, "
                                                    "$.error.Cause)"),
            result_path=sfn.JsonPath.DISCARD)
        notify.add_catch(failed, result_path="$.notify_error")
        notify.next(failed)
        definition = self.rollout_states(self, notify=notify)
        log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.THREE_MONTHS,
                                  removal_policy=cdk.RemovalPolicy.RETAIN)
        self.state_machine = sfn.StateMachine(
            self, "Resource", definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=timeout, tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL,
                                include_execution_data=True),
            comment="neo-edge canary rollout: canary group, its devices' verdicts, then the fleet")
        topic_key = getattr(alert_topic, "master_key", None)
        if topic_key is not None:
            self.state_machine.add_to_role_policy(iam.PolicyStatement(
                actions=["kms:GenerateDataKey", "kms:Decrypt"], resources=[topic_key.key_arn]))
        allow_redundant_depends_on(self.state_machine)
        acknowledge_state_machine_role(self.state_machine,
                                       (self.canary_deployer, self.fleet_deployer))
        self.state_machine_arn = self.state_machine.state_machine_arn
        self.dashboard = self._dashboard(dashboard, fleet_name)

    def _deployer(self, id: str, fleet: IEdgeFleet, what: str) -> lambda_.Function:
        fn = bundled_function(self, id, "deployment_manager", timeout=cdk.Duration.minutes(1),
                              environment={"TARGET_ARN": fleet.thing_group_arn,
                                           "FAILURE_THRESHOLD_PERCENT": "0"},
                              description=f"neo-edge: deploys a component version to {what}")
        _checkov.invoked_synchronously(fn, "the canary rollout state machine (a LambdaInvoke task)")
        grant_deploy(fn, fleet)
        return fn

    def rollout_states(self, scope: Construct, *, notify: sfn.IChainable,
                       component_path: str = "$",
                       done: Optional[sfn.IChainable] = None) -> sfn.Chain:
        """This rollout's states (:func:`canary_states`: canary group, its devices'
        verdicts, then the fleet), created in ``scope`` for a state machine of its own or
        another one (``RetrainPipeline(canary=...)``), with this construct's deployers,
        reports table and settings; the rollout id is the execution's name. ``notify``,
        ``component_path`` and ``done`` as :func:`canary_states` takes them. The state
        machine that runs them gets the permissions they need (invoking the deployers,
        ``dynamodb:Query`` on the reports table)."""
        return canary_states(scope, canary_deployer=self.canary_deployer,
                             fleet_deployer=self.fleet_deployer, table=self.reports_table,
                             notify=notify, component_path=component_path, done=done,
                             **self._settings)

    def grant_start_execution(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` start a rollout (``states:StartExecution``)."""
        return self.state_machine.grant_start_execution(grantee)

    def metric_rollout_failures(self, **options: Any) -> cw.Metric:
        """Rejections in shadow and rollbacks after promotion, fleet-wide. Default: sum over
        5 minutes."""
        props = dict(namespace=_NAMESPACE, metric_name="RolloutFailures", statistic="Sum",
                     period=cdk.Duration.minutes(5))
        props.update(options)
        return cw.Metric(**props)

    def metric_per_version(self, metric_name: str, statistic: str = "Sum",
                           **options: Any) -> cw.MathExpression:
        """One line per model version (and decision) of a rollout metric (a ``SEARCH``, so
        versions rolled out later show up by themselves). Default: 5-minute periods."""
        if metric_name not in ROLLOUT_METRICS:
            raise ValueError(f"metric_name must be one of {', '.join(ROLLOUT_METRICS)}; "
                             f"got {metric_name!r}")
        period = options.pop("period", cdk.Duration.minutes(5))
        dims = ",".join(ROLLOUT_METRICS[metric_name][2])
        query = (f"SEARCH('{{{_NAMESPACE},{dims}}} MetricName=\"{metric_name}\"', '{statistic}', "
                 f"{int(period.to_seconds())})")
        return cw.MathExpression(expression=query, using_metrics={}, period=period,
                                 label=options.pop("label", ""), **options)

    def _dashboard(self, dashboard: Optional[cw.Dashboard], fleet_name: str) -> cw.Dashboard:
        if dashboard is None:
            dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{fleet_name}-rollouts",
                                     default_interval=cdk.Duration.days(1))
        dashboard.add_widgets(cw.TextWidget(
            markdown=f"## Model rollouts ({fleet_name})\nShadow trials and health watches on the "
                     f"devices, per model version on trial: decisions, agreement with the "
                     f"serving version, and both versions' latency p90.", width=24, height=2))
        dashboard.add_widgets(
            cw.GraphWidget(title="Shadow decisions per model version", width=8,
                           left=[self.metric_per_version("ShadowDecisions")]),
            cw.GraphWidget(title="Health decisions per model version", width=8,
                           left=[self.metric_per_version("HealthDecisions")]),
            cw.GraphWidget(title="Top-1 agreement with the serving version", width=8,
                           left=[self.metric_per_version("ShadowAgreement", "Average")],
                           left_y_axis=cw.YAxisProps(min=0, max=1)))
        dashboard.add_widgets(
            cw.GraphWidget(title="Latency p90 in shadow: candidate vs serving (ms)", width=12,
                           left=[self.metric_per_version("ShadowCandidateLatencyP90", "Average",
                                                         label="candidate "),
                                 self.metric_per_version("ShadowCurrentLatencyP90", "Average",
                                                         label="serving ")]),
            cw.GraphWidget(title="Candidate error rate in shadow", width=6,
                           left=[self.metric_per_version("ShadowCandidateErrorRate", "Average")]),
            cw.AlarmStatusWidget(title="Rollout alarm", width=6, alarms=[self.alarm]))
        return dashboard
