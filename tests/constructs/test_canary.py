"""CanaryRollout: the synthesized rules, table, metrics and state machine, and runs of the
state machine under moto's Step Functions executor, through both branches.

In a run, the Greengrass steps invoke the ``deployment_manager`` functions, whose results
moto's Docker-free Lambda backend returns from a queue (moto has no Greengrass V2; the
function itself is tested in tests/lambdas/test_deployment_manager.py); the canary devices'
reports are items in moto's DynamoDB table, shaped as the reports rule writes them: the
message the device publishes (``neo_edge_runtime.rollout.decision_message``, the device's own
code) plus what the rule's SQL adds (``device`` from the topic, ``expires_at``). The state
machine reads them with its real AWS SDK ``dynamodb:query`` tasks.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from decimal import Decimal
from types import SimpleNamespace

import aws_cdk as cdk
import boto3
import botocore.session
import pytest
from aws_cdk import aws_cloudwatch as cw
from moto import mock_aws

from checks import synth_checked
from neo_edge import CanaryRollout, EdgeFleet
from neo_edge_runtime.rollout import decision_message
from test_retrain import (ACCOUNT, REGION, Resolver, all_states, definition_with_placeholders,
                          logical_of, step_functions_casing)


@pytest.fixture(scope="module")
def built():
    app = cdk.App()
    stack = cdk.Stack(app, "Canary")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="digits")
    canary = EdgeFleet(stack, "CanaryFleet", fleet_name="digits-canary")
    rollout = CanaryRollout(stack, "Rollout", fleet=fleet, canary_fleet=canary,
                            poll_interval=cdk.Duration.seconds(1),
                            deployment_timeout=cdk.Duration.seconds(3),
                            report_timeout=cdk.Duration.seconds(3))
    template = synth_checked(app, stack)
    [(logical, machine)] = [(k, v) for k, v in template.find_resources(
        "AWS::StepFunctions::StateMachine").items() if k.startswith("Rollout")]
    return SimpleNamespace(template=template, body=template.to_json(), rollout=rollout,
                           machine=machine, definition=definition_with_placeholders(machine))


# ---------------------------------------------------------------------------------------
# The synthesized resources


def rules(built) -> dict:
    return {k: r["Properties"]["TopicRulePayload"] for k, r in
            built.template.find_resources("AWS::IoT::TopicRule").items()}


def test_reports_rule_writes_decisions_with_a_rollout_id_to_the_table(built):
    [reports] = [r for k, r in rules(built).items() if k.startswith("RolloutReportsRule")]
    assert reports["Sql"] == ("SELECT *, topic(2) AS device, floor(timestamp() / 1000) + 2592000 "
                              "AS expires_at FROM 'neo-edge/+/rollout' WHERE rollout_id <> ''")
    [action] = reports["Actions"]
    # The action's shape, from botocore's iot model (botocore/data/iot/2015-05-28/
    # service-2.json, DynamoDBv2Action: roleArn + putItem {tableName}); CloudFormation spells
    # its keys in PascalCase.
    model = botocore.session.get_session().get_service_model("iot")
    shape = model.shape_for("DynamoDBv2Action")
    assert set(shape.members) == {"roleArn", "putItem"}
    assert set(shape.members["putItem"].members) == {"tableName"}
    assert set(action["DynamoDBv2"]) == {"RoleArn", "PutItem"}
    assert set(action["DynamoDBv2"]["PutItem"]) == {"TableName"}


def test_reports_table_is_keyed_by_rollout_and_device_and_expires(built):
    built.template.has_resource_properties("AWS::DynamoDB::Table", {
        "KeySchema": [{"AttributeName": "rollout_id", "KeyType": "HASH"},
                      {"AttributeName": "device", "KeyType": "RANGE"}],
        "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
        "BillingMode": "PAY_PER_REQUEST"})


def test_every_decision_reaches_the_events_log_group_and_its_metrics(built):
    [events] = [r for k, r in rules(built).items() if k.startswith("RolloutEventsRule")]
    assert events["Sql"] == "SELECT *, topic(2) AS device FROM 'neo-edge/+/rollout'"
    filters = built.template.find_resources("AWS::Logs::MetricFilter")
    names = {f["Properties"]["MetricTransformations"][0]["MetricName"]: f["Properties"]
             for f in filters.values()}
    assert set(names) == {"ShadowDecisions", "HealthDecisions", "ShadowAgreement",
                          "ShadowCandidateErrorRate", "ShadowCandidateLatencyP90",
                          "ShadowCurrentLatencyP90", "RolloutFailures"}
    decisions = names["ShadowDecisions"]["MetricTransformations"][0]
    assert decisions["Dimensions"] == [
        {"Key": "ModelName", "Value": "$.model_name"},
        {"Key": "ModelVersion", "Value": "$.model_version"},
        {"Key": "Decision", "Value": "$.decision"}]
    built.template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "RolloutFailures", "Namespace": "NeoEdge", "Threshold": 1})


def test_the_metric_fields_are_in_what_the_device_publishes():
    message = decision_message(
        event="shadow", decision="reject", device="d", rollout_id="r", reasons=[],
        model={"name": "m", "version": "2", "id": "2-x"}, baseline={"version": "1"},
        figures={"agreement": 0.5, "error_rate_candidate": 0.0,
                 "latency_p90_candidate_ms": 1.0, "latency_p90_current_ms": 1.0},
        thresholds={})
    from neo_edge.canary import ROLLOUT_METRICS

    for _, value, dimensions in ROLLOUT_METRICS.values():
        for path in [value, *dimensions.values()]:
            if path.startswith("$."):
                node = message
                for part in path[2:].split("."):
                    node = node[part]


def test_sdk_tasks_only_no_sync_integrations(built):
    resources = {s.get("Resource") for s in all_states(built.definition).values()
                 if s["Type"] == "Task"}
    assert "arn:aws:states:::aws-sdk:dynamodb:query" in resources
    assert not [r for r in resources if r and r.endswith(".sync")]


def test_fails_when_the_canary_group_is_the_fleet():
    stack = cdk.Stack(cdk.App(), "S")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="f")
    with pytest.raises(ValueError, match="canary_fleet must be a thing group of its own"):
        CanaryRollout(stack, "R", fleet=fleet, canary_fleet=fleet)


def test_fails_when_device_configuration_has_an_unknown_key():
    stack = cdk.Stack(cdk.App(), "S")
    with pytest.raises(ValueError, match="device_configuration keys must be inference "
                                         "configuration keys .*; got shadow"):
        CanaryRollout(stack, "R", fleet=EdgeFleet(stack, "F", fleet_name="f"),
                      canary_fleet=EdgeFleet(stack, "C", fleet_name="c"),
                      device_configuration={"shadow": 1})


def test_rollout_graphs_go_to_a_given_dashboard():
    stack = cdk.Stack(cdk.App(), "S")
    dashboard = cw.Dashboard(stack, "Fleet")
    rollout = CanaryRollout(stack, "R", fleet=EdgeFleet(stack, "F", fleet_name="f"),
                            canary_fleet=EdgeFleet(stack, "C", fleet_name="c"),
                            dashboard=dashboard)
    assert rollout.dashboard is dashboard
    body = json.dumps(stack.resolve(dashboard.node.default_child.dashboard_body))
    assert "ShadowAgreement" in body


# ---------------------------------------------------------------------------------------
# Runs under moto's Step Functions executor


@pytest.fixture()
def moto_run(built, monkeypatch):
    step_functions_casing(monkeypatch)
    body = built.body
    config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
    with mock_aws(config=config):
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="runner", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
        lam = boto3.client("lambda", region_name=REGION)
        arns = {}
        for prefix in ("RolloutCanaryDeployer", "RolloutFleetDeployer"):
            logical = logical_of(body, "AWS::Lambda::Function", prefix)
            arns[logical] = lam.create_function(
                FunctionName=prefix, Runtime="python3.11", Role=role, Handler="handler.handler",
                Code={"ZipFile": code.getvalue()})["FunctionArn"]
        topic = boto3.client("sns", region_name=REGION).create_topic(Name="alerts")["TopicArn"]
        dynamodb = boto3.resource("dynamodb", region_name=REGION)
        table = dynamodb.create_table(
            TableName="reports", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "rollout_id", "KeyType": "HASH"},
                       {"AttributeName": "device", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "rollout_id", "AttributeType": "S"},
                                  {"AttributeName": "device", "AttributeType": "S"}])
        table_logical = logical_of(body, "AWS::DynamoDB::Table", "RolloutReports")
        refs = {logical_of(body, "AWS::SNS::Topic", "RolloutAlerts"): topic,
                table_logical: "reports"}
        arns[table_logical] = table.table_arn
        definition = Resolver(body, refs, arns)(built.machine["Properties"]["DefinitionString"])
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(name="canary", definition=definition,
                                           roleArn=role)["stateMachineArn"]
        from moto.awslambda.utils import get_backend
        from moto.sns.models import sns_backends
        queue = get_backend(ACCOUNT, REGION).lambda_simple_results_queue

        def run(name: str, lambda_results: list, reports: dict) -> dict:
            """``reports``: device -> decision, written before the run as the rule would."""
            queue[:] = [json.dumps(r) for r in lambda_results]
            for device, decision in reports.items():
                message = decision_message(
                    event="health" if decision in ("healthy", "rollback") else "shadow",
                    decision=decision, device="spoofed", rollout_id=name,
                    model={"name": "digits", "version": "2", "id": "2-abc"},
                    baseline={"name": "digits", "version": "1", "id": "1-def"},
                    reasons=[], figures={"agreement": 0.97, "requests": 100},
                    thresholds={"shadowShare": 0.25})
                item = json.loads(json.dumps(message), parse_float=Decimal)
                item.update(device=device, expires_at=int(time.time()) + 2592000)
                table.put_item(Item=item)
            arn = sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(
                {"component_name": "com.example.Digits",
                 "component_version": "1.0.7"}))["executionArn"]
            deadline = time.time() + 60
            while time.time() < deadline:
                described = sfn.describe_execution(executionArn=arn)
                if described["status"] != "RUNNING":
                    return described
                time.sleep(0.1)
            raise AssertionError("the execution did not finish within 60 seconds")

        yield SimpleNamespace(
            run=run, queue=queue,
            sent=lambda: sns_backends[ACCOUNT][REGION].topics[topic].sent_notifications)


CANARY_DEPLOYING = {"deployment_id": "canary-1", "done": False}
CANARY_DEPLOYED = {"deployment_id": "canary-1", "done": True, "succeeded": 2, "failed": 0}
FLEET_DEPLOYING = {"deployment_id": "fleet-1", "done": False}
FLEET_DEPLOYED = {"deployment_id": "fleet-1", "done": True, "succeeded": 40, "failed": 0}


def test_healthy_canaries_let_the_version_reach_the_fleet(moto_run):
    done = moto_run.run("pass-1", [CANARY_DEPLOYING, CANARY_DEPLOYED, FLEET_DEPLOYING,
                                   FLEET_DEPLOYED],
                        {"canary-a": "healthy", "canary-b": "healthy"})
    assert done["status"] == "SUCCEEDED", done.get("cause")
    output = json.loads(done["output"])
    assert output["rollout"] == {"id": "pass-1"}
    assert output["reports"]["summary"] == {"healthy": 2, "failed": 0, "reported": 2,
                                            "devices": 2, "attempts": 1}
    assert output["fleet"]["done"] is True
    assert not moto_run.queue and not moto_run.sent()


def test_a_rejecting_canary_stops_the_rollout_before_the_fleet(moto_run):
    done = moto_run.run("stop-1", [CANARY_DEPLOYING, CANARY_DEPLOYED],
                        {"canary-a": "healthy", "canary-b": "reject"})
    assert done["status"] == "FAILED" and done["error"] == "CanaryRejected"
    assert "1 of 2 canary devices rejected the new version" in done["cause"]
    assert not moto_run.queue  # the fleet's deployer was never invoked
    [(_, message, subject)] = [n[:3] for n in moto_run.sent()]
    assert subject == "neo-edge canary rollout stopped"
    assert message.startswith("Rollout stop-1 of com.example.Digits 1.0.7: CanaryRejected: ")


def test_reports_of_another_rollout_do_not_count(moto_run):
    moto_run.run("other-1", [CANARY_DEPLOYING, CANARY_DEPLOYED],
                 {"canary-a": "reject", "canary-b": "reject"})
    done = moto_run.run("late-1", [CANARY_DEPLOYING, CANARY_DEPLOYED], {"canary-a": "promote"})
    assert done["status"] == "FAILED" and done["error"] == "CanaryReportsIncomplete"
    assert "0 of 2 canary devices had reported healthy and 0 failed" in done["cause"]
