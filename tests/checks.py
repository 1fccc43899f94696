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
