"""The public API: every public module says what it exports, and the package re-exports it."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import typing

import pytest
from constructs import Construct

import neo_edge

PACKAGE = pathlib.Path(neo_edge.__file__).resolve().parent
PUBLIC_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_"))


def defined_public_names(module_name: str) -> set:
    """Names the module defines at its top level (classes, functions, assignments) without
    a leading underscore."""
    tree = ast.parse((PACKAGE / f"{module_name}.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")}


def test_there_are_public_modules():
    assert {"component", "deployment", "fleet", "interfaces", "storage"} <= set(PUBLIC_MODULES)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_name_in_all_exists(module_name):
    module = importlib.import_module(f"neo_edge.{module_name}")
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"neo_edge.{module_name}.__all__ names what it lacks: {missing}"
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_lists_every_public_name_the_module_defines(module_name):
    module = importlib.import_module(f"neo_edge.{module_name}")
    unlisted = sorted(defined_public_names(module_name) - set(module.__all__))
    assert not unlisted, f"neo_edge.{module_name} defines public names outside __all__: {unlisted}"


def test_package_all_names_exist():
    assert [n for n in neo_edge.__all__ if not hasattr(neo_edge, n)] == []


def test_package_reexports_every_public_class():
    classes = {name for module_name in PUBLIC_MODULES
               for name, value in vars(importlib.import_module(f"neo_edge.{module_name}")).items()
               if name in importlib.import_module(f"neo_edge.{module_name}").__all__
               and inspect.isclass(value)}
    assert sorted(classes - set(neo_edge.__all__)) == []


def test_package_reexports_every_construct_and_interface():
    constructs = {name for name in dir(neo_edge)
                  if inspect.isclass(getattr(neo_edge, name))
                  and issubclass(getattr(neo_edge, name), Construct)}
    assert constructs == {
        "ArtifactSigningKey", "CanaryRollout", "CloudInferenceEndpoint", "EdgeCompilationJob",
        "EdgeCompilationSet", "EdgeDeployment", "EdgeFleet", "EdgeInferenceComponent",
        "EdgeLambdaComponent", "EdgeTelemetry", "ModelArtifactBucket", "NeoCompilationJob",
        "NeoCompilationSet", "NeoEdgePipeline", "RetrainPipeline", "TrainingJob"}
    assert constructs <= set(neo_edge.__all__)
    from neo_edge import interfaces
    assert set(interfaces.__all__) <= set(neo_edge.__all__)
    assert all(getattr(getattr(interfaces, n), "_is_protocol", False) for n in interfaces.__all__)


def test_no_any_in_cross_construct_parameters():
    """Parameters that take another construct are typed with an interface or a class."""
    checked = {
        ("EdgeDeployment", "__init__"): ("fleet", "components"),
        ("EdgeDeployment", "add_component"): ("component",),
        ("EdgeTelemetry", "__init__"): ("fleet", "deployment"),
        ("RetrainPipeline", "__init__"): ("component", "fleet"),
        ("EdgeInferenceComponent", "__init__"): ("models",),
        ("CompiledModel", "from_compilation_job"): ("job",),
        ("CompiledModel", "from_s3"): ("target",),
        ("CompiledModel", "from_folder"): ("target",),
        ("DeploymentComponent", "of"): ("component",),
        ("NeoEdgePipeline", "__init__"): ("fleet", "bucket", "runtime_bundles"),
        ("EdgeFleet", "__init__"): ("artifact_bucket",),
    }
    for (cls_name, method), params in checked.items():
        fn = getattr(getattr(neo_edge, cls_name), method)
        hints = typing.get_type_hints(fn)
        for param in params:
            assert "Any" not in repr(hints[param]).replace("Mapping[str, typing.Any]", ""), (
                f"{cls_name}.{method}({param}: {hints[param]!r})")
