"""moto's server mode for ``make deploy-local``, with a placeholder for what its
CloudFormation does not implement: ``python scripts/moto_server.py -H localhost -p PORT``.

moto's CloudFormation creates the resource types it models and skips the others; a
``Fn::GetAtt`` on a skipped resource then fails the whole stack ("references undefined
resource"), and a custom resource makes moto invoke its provider Lambda, in Docker. Here
both become a :class:`Placeholder`: a resource with a physical id, an ARN-shaped value for
any attribute, and no behaviour, listed by ``GET /neo-edge/placeholders`` so the report can
say exactly which resources were not really created. Nothing else of moto changes.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from moto.cloudformation import parsing
from moto.core.common_models import CloudFormationModel

_lock = threading.Lock()
#: (stack id, logical id, resource type) of every placeholder created.
PLACEHOLDERS: list = []


class Placeholder(CloudFormationModel):
    """A resource of a type moto's CloudFormation lacks (or a custom resource)."""

    # moto's model metaclass names the service after the second part of the module.
    __module__ = "deploy_local.placeholder"

    def __init__(self, name: str, resource_type: str, account_id: str, region_name: str):
        self.name, self.resource_type = name, resource_type
        self.account_id, self.region_name = account_id, region_name

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @staticmethod
    def cloudformation_type() -> str:
        return "NeoEdge::DeployLocal::Placeholder"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return True

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        service = self.resource_type.split("::")[1].lower() if "::" in self.resource_type else "x"
        if attribute_name.endswith("Arn") or attribute_name == "Arn":
            return f"arn:aws:{service}:{self.region_name}:{self.account_id}:{self.name}"
        return f"{self.name}.{attribute_name}"

    @classmethod
    def create_from_cloudformation_json(cls, resource_name: str, cloudformation_json: Any,
                                        account_id: str, region_name: str,
                                        **kwargs: Any) -> "Placeholder":
        with _lock:
            PLACEHOLDERS.append({"stack": kwargs.get("StackId"), "logical_id": kwargs["LogicalId"],
                                 "type": kwargs["ResourceType"]})
        return cls(resource_name, kwargs["ResourceType"], account_id, region_name)

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name: str, cloudformation_json: Any,
                                        account_id: str, region_name: str) -> None:
        return None


_moto_class_from_type = parsing.resource_class_from_type


def _class_from_type(resource_type: str):
    if resource_type.startswith("Custom::") or resource_type == "AWS::CloudFormation::CustomResource":
        return Placeholder
    return _moto_class_from_type(resource_type) or Placeholder


def main(argv: list) -> None:
    import json

    from moto import server
    from moto.moto_server import werkzeug_app

    parsing.resource_class_from_type = _class_from_type
    dispatch = werkzeug_app.DomainDispatcherApplication.__call__

    def call(self, environ, start_response):
        if environ.get("PATH_INFO") == "/neo-edge/placeholders":
            with _lock:
                body = json.dumps(PLACEHOLDERS).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        return dispatch(self, environ, start_response)

    werkzeug_app.DomainDispatcherApplication.__call__ = call
    server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
