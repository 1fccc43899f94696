"""Shared test set-up."""

import json
import os
import pathlib

import pytest

# jsii prints a banner for node 20 on every import of aws_cdk unless told not to.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
# Tests never reach AWS: fake credentials and a fixed region for boto3 and moto.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_SECURITY_TOKEN", "testing")
os.environ.setdefault("AWS_SESSION_TOKEN", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


#: The recipe schema the AWS GDK CLI validates with, kept in the workspace's shared reference
#: data beside the repository (never copied into it).
RECIPE_SCHEMA = (pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "schemas"
                 / "greengrass-recipe.schema.json")


def _lower_keys(value):
    if isinstance(value, dict):
        return {k.lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


@pytest.fixture(scope="session")
def gdk_recipe_errors():
    """``errors(recipe) -> list[str]``: the GDK CLI's check of a recipe.

    Like ``gdk component build``: every key lowercased recursively, then JSON Schema
    Draft 7. Skipped, naming the file, where the shared schema is absent (a plain clone).
    """
    if not RECIPE_SCHEMA.is_file():
        pytest.skip(f"the Greengrass recipe schema {RECIPE_SCHEMA} is absent (a clone without "
                    f"../shared); CI has it and runs this test")
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(RECIPE_SCHEMA.read_text()))

    def errors(recipe) -> list:
        return [e.message for e in validator.iter_errors(_lower_keys(json.loads(json.dumps(recipe))))]

    return errors
