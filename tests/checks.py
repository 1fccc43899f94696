"""Checks every synthesized stack goes through: cdk-nag's AwsSolutions pack and cfn-lint.

Usage in a test::

    app = cdk.App()
    stack = cdk.Stack(app, "Test")
    MyConstruct(stack, "Thing", ...)
    template = synth_checked(app, stack)   # raises on a finding; returns a Template
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402
from cdk_nag import AwsSolutionsChecks  # noqa: E402
from cfnlint.api import ManualArgs, lint  # noqa: E402

LINT_REGIONS = ["us-east-1", "eu-west-1"]


def cfn_lint_findings(template: dict) -> list[str]:
    """cfn-lint errors and warnings for a synthesized template (informational ones dropped)."""
    matches = lint(json.dumps(template), config=ManualArgs(regions=LINT_REGIONS))
    return [f"{m.rule.id} {m.message} ({'/'.join(map(str, m.path))})"
            for m in matches if m.rule.severity.lower() in ("error", "warning")]


def synth_checked(app: cdk.App, *stacks: cdk.Stack) -> Template | list[Template]:
    """Synthesize ``app`` with cdk-nag AwsSolutions, then cfn-lint every stack given.

    cdk-nag makes synth raise on any unacknowledged finding (the report names each one);
    cfn-lint findings raise an AssertionError listing them. Returns the Template of the
    one stack given, or the list of them.
    """
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    assembly = app.synth()
    templates = []
    for stack in stacks:
        body = assembly.get_stack_by_name(stack.stack_name).template
        findings = cfn_lint_findings(body)
        assert not findings, f"cfn-lint on {stack.stack_name}:\n" + "\n".join(findings)
        templates.append(Template.from_json(body))
    return templates[0] if len(templates) == 1 else templates


def _values_at(event, path: list) -> list:
    """The values at ``path`` in ``event``, through arrays of objects on the way."""
    if isinstance(event, list):
        return [v for item in event for v in _values_at(item, path)]
    if not path:
        return event if isinstance(event, list) else [event]
    if not isinstance(event, dict) or path[0] not in event:
        return []
    return _values_at(event[path[0]], path[1:])


def _value_matches(value, allowed) -> bool:
    if isinstance(allowed, dict):
        (kind, operand), = allowed.items()
        if kind != "prefix":
            raise NotImplementedError(f"event pattern filter {kind!r}")
        return isinstance(value, str) and value.startswith(operand)
    return json.dumps(value) == json.dumps(allowed)


def event_matches(pattern: dict, event: dict, path: tuple = ()) -> bool:
    """Whether an EventBridge ``pattern`` matches ``event``: every field of the pattern has,
    at its path in the event (through arrays of objects too), a value among the pattern's
    exact values or ``{"prefix": ...}`` filters; other filters raise.

    moto's matcher does not look inside arrays of objects (the Greengrass component event's
    ``components``), which EventBridge does.
    """
    for key, allowed in pattern.items():
        if isinstance(allowed, dict):
            if not event_matches(allowed, event, (*path, key)):
                return False
        elif not any(_value_matches(v, a) for v in _values_at(event, [*path, key]) for a in allowed):
            return False
    return True
