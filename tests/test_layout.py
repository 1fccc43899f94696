"""The repository layout is a contract: `constructs/` is a source root, never a package."""

import importlib
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_constructs_folder_is_not_a_package():
    assert not (ROOT / "constructs" / "__init__.py").exists()


def test_import_constructs_resolves_to_the_installed_library():
    constructs = importlib.import_module("constructs")
    path = pathlib.Path(constructs.__file__).resolve()
    assert "site-packages" in path.parts, path
    assert hasattr(constructs, "Construct")


def test_the_two_packages_come_from_their_source_roots():
    import neo_edge
    import neo_edge_runtime

    assert pathlib.Path(neo_edge.__file__).resolve().parent == ROOT / "constructs" / "neo_edge"
    assert (pathlib.Path(neo_edge_runtime.__file__).resolve().parent
            == ROOT / "edge_runtime" / "neo_edge_runtime")


def test_lambda_assets_are_folders_not_packages():
    for folder in (ROOT / "lambda").iterdir():
        if folder.is_dir() and folder.name != "__pycache__":
            assert not (folder / "__init__.py").exists(), folder
            assert (folder / f"{folder.name}.py").exists(), f"{folder} needs {folder.name}.py"
