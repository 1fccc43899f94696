"""provisioning_hook: a claim certificate registers new devices only, never an existing one."""

from __future__ import annotations

from types import SimpleNamespace

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

REGION = "us-east-1"
TEMPLATE = "cameras-FleetProvisioning"


def context():
    return SimpleNamespace(function_name="provisioning_hook", memory_limit_in_mb=128,
                           invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:h",
                           aws_request_id="req-1")


def request(thing_name="camera-0042", template=TEMPLATE, **parameters):
    """The hook's input as AWS documents it (AWS IoT developer guide, "Pre-provisioning
    hooks", pre-provision hook input), with this test's values."""
    return {"claimCertificateId": "a" * 64, "certificateId": "b" * 64,
            "certificatePem": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----",
            "templateArn": f"arn:aws:iot:{REGION}:123456789012:provisioningtemplate/{template}",
            "clientId": "221a6d10-9c7f-42f1-9153-e52e6fc869c1",
            "parameters": {"ThingName": thing_name, **parameters}}


@pytest.fixture
def iot(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield boto3.client("iot", region_name=REGION)


@pytest.fixture
def hook(iot, load_lambda, monkeypatch):
    monkeypatch.setenv("TEMPLATE_NAME", TEMPLATE)
    monkeypatch.delenv("THING_NAME_PREFIX", raising=False)
    monkeypatch.delenv("RESERVED_PREFIX", raising=False)
    return load_lambda("provisioning_hook")


def test_a_new_device_may_register(hook):
    assert hook.handler(request(), context()) == {"allowProvisioning": True}


def test_an_existing_thing_cannot_be_taken_over(hook, iot):
    iot.create_thing(thingName="camera-0042")
    assert hook.handler(request(), context()) == {"allowProvisioning": False}
    assert hook.decide(request())[1].startswith("thing 'camera-0042' exists already")


def test_the_name_must_carry_the_prefix(iot, load_lambda, monkeypatch):
    monkeypatch.setenv("TEMPLATE_NAME", TEMPLATE)
    monkeypatch.setenv("THING_NAME_PREFIX", "camera-")
    hook = load_lambda("provisioning_hook")
    assert hook.handler(request("camera-7"), context())["allowProvisioning"] is True
    assert hook.handler(request("gateway-7"), context())["allowProvisioning"] is False


def test_a_name_in_the_claim_client_ids_is_refused(iot, load_lambda, monkeypatch):
    monkeypatch.setenv("TEMPLATE_NAME", TEMPLATE)
    monkeypatch.setenv("RESERVED_PREFIX", "claim-")
    hook = load_lambda("provisioning_hook")
    assert hook.handler(request("claim-0042"), context())["allowProvisioning"] is False
    assert hook.handler(request("camera-0042"), context())["allowProvisioning"] is True


def test_another_template_is_refused(hook):
    assert hook.handler(request(template="other"), context()) == {"allowProvisioning": False}


def test_an_error_refuses(hook, monkeypatch):
    def unreachable(**_):
        raise RuntimeError("IoT is unreachable")

    monkeypatch.setattr(hook.iot, "describe_thing", unreachable)
    assert hook.handler(request(), context()) == {"allowProvisioning": False}


def test_fails_at_import_without_the_template_name(iot, load_lambda, monkeypatch):
    monkeypatch.delenv("TEMPLATE_NAME", raising=False)
    with pytest.raises(RuntimeError, match="TEMPLATE_NAME is not set"):
        load_lambda("provisioning_hook")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=3), max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=st.one_of(_JSON, st.builds(request, thing_name=_JSON),
                       st.builds(lambda e, extra: {**request(), **extra},
                                 st.none(), st.dictionaries(st.sampled_from(
                                     ["templateArn", "parameters"]), _JSON, max_size=2))))
def test_any_request_gets_one_answer_and_only_valid_new_names_are_allowed(hook, event):
    out = hook.handler(event, context())
    assert set(out) == {"allowProvisioning"} and isinstance(out["allowProvisioning"], bool)
    if out["allowProvisioning"]:
        name = event["parameters"]["ThingName"]
        assert isinstance(name, str) and hook._THING_NAME.match(name)
        assert event["templateArn"].endswith(f"/{TEMPLATE}")
