"""Decide whether a device holding the fleet's claim certificate may register, and as what.

The pre-provisioning hook of an ``EdgeFleet``'s fleet provisioning template. AWS IoT calls it
on every ``RegisterThing`` request made with the (shared) claim certificate, with the object
AWS documents ("Pre-provisioning hooks", AWS IoT developer guide)::

    {"claimCertificateId": "...", "certificateId": "...", "certificatePem": "...",
     "templateArn": "arn:aws:iot:...:provisioningtemplate/<name>", "clientId": "...",
     "parameters": {"ThingName": "...", ...}}

and provisions the device only when the answer is ``{"allowProvisioning": true}``.

Whoever holds the claim certificate chooses the ``ThingName``, and the template attaches the
new certificate to that thing, so without this check a copied claim certificate is enough to
take over an existing device's identity (its deployments, its credentials). Refused:

- a ``ThingName`` that is not 1 to 128 letters, digits, ``:``, ``_`` or ``-``, that does
  not start with ``$THING_NAME_PREFIX`` (when set), or that starts with
  ``$RESERVED_PREFIX`` (the client ids claim connections use: a device so named could be
  disconnected by any claim connection);
- a ``ThingName`` that already exists: a device registers once; re-registering a device
  (a replaced board) is an operator's decision: delete the old thing, or register the new
  certificate by hand;
- a request for another template than ``$TEMPLATE_NAME``.

Any error (a malformed event, IoT unreachable) refuses: AWS IoT then fails the request with
``ACCESS_DENIED``, and the device may retry.

Environment variables
---------------------
TEMPLATE_NAME
    Required. The provisioning template this hook guards.
THING_NAME_PREFIX
    Optional. Devices must name themselves with this prefix. Default: any name.
RESERVED_PREFIX
    Optional. No device may be named with this prefix. Default: none.
"""

from __future__ import annotations

import os
import re
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

__all__ = ["decide", "handler"]

_THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")

TEMPLATE_NAME = os.environ.get("TEMPLATE_NAME", "").strip()
if not TEMPLATE_NAME:
    raise RuntimeError("environment variable TEMPLATE_NAME is not set; provisioning_hook needs "
                       "the name of the template it guards")
THING_NAME_PREFIX = os.environ.get("THING_NAME_PREFIX", "")
RESERVED_PREFIX = os.environ.get("RESERVED_PREFIX", "")

logger = Logger()
iot = boto3.client("iot")


def _exists(thing_name: str) -> bool:
    try:
        iot.describe_thing(thingName=thing_name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            return False
        raise
    return True


def decide(event: Any) -> tuple[bool, str]:
    """``(allowed, reason)`` for one pre-provisioning request."""
    if not isinstance(event, dict):
        return False, f"the request must be a JSON object; got {type(event).__name__}"
    template = str(event.get("templateArn", "")).rsplit("/", 1)[-1]
    if template != TEMPLATE_NAME:
        return False, f"the request is for template {template!r}, not {TEMPLATE_NAME!r}"
    parameters = event.get("parameters")
    name = parameters.get("ThingName") if isinstance(parameters, dict) else None
    if not isinstance(name, str) or not _THING_NAME.match(name):
        return False, (f"ThingName must be 1 to 128 letters, digits, ':', '_' or '-'; "
                       f"got {name!r}")
    if not name.startswith(THING_NAME_PREFIX):
        return False, f"ThingName must start with {THING_NAME_PREFIX!r}; got {name!r}"
    if RESERVED_PREFIX and name.startswith(RESERVED_PREFIX):
        return False, (f"ThingName must not start with {RESERVED_PREFIX!r} (claim connections' "
                       f"client ids); got {name!r}")
    if _exists(name):
        return False, (f"thing {name!r} exists already: a claim certificate registers new "
                       f"devices only (delete the thing to register a replacement)")
    return True, "a new thing"


@logger.inject_lambda_context
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    """``{"allowProvisioning": bool}``: see the module docstring."""
    try:
        allowed, reason = decide(event)
    except Exception:  # noqa: BLE001 - a hook that fails must refuse, never allow
        logger.exception("provisioning refused: the request could not be checked")
        return {"allowProvisioning": False}
    parameters = event.get("parameters") if isinstance(event, dict) else None
    logger.info("provisioning allowed" if allowed else "provisioning refused",
                extra={"reason": reason, "claim_certificate_id": event.get("claimCertificateId")
                       if isinstance(event, dict) else None,
                       "thing_name": parameters.get("ThingName")
                       if isinstance(parameters, dict) else None})
    return {"allowProvisioning": allowed}
