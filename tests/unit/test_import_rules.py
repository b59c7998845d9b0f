"""The layering rules of design.md, checked on the source: one test walks every import.

* router/core never imports router/io (or anything doing I/O: asyncio, socket, os, time).
* router/io modules do not import each other.
* cli imports nothing of the router but the API's types (and pure core helpers that
  validate user input: peer names and target addresses).
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE_FORBIDDEN = {"asyncio", "socket", "os", "time", "subprocess", "threading", "selectors"}
CLI_ALLOWED_ROUTER = {
    "pyweave.router.api_types",
    "pyweave.router.core.names",
    "pyweave.router.core.connector",
}


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_core_does_no_io() -> None:
    for path in (ROOT / "router" / "core").rglob("*.py"):
        for name in imports_of(path):
            top = name.split(".")[0]
            assert top not in CORE_FORBIDDEN, f"{path} imports {name}"
            assert not name.startswith("pyweave.router.io"), f"{path} imports {name}"
            assert not name.startswith("pyweave.cli"), f"{path} imports {name}"


def test_core_uses_no_global_random() -> None:
    """`random` may only be imported for the injected `random.Random` type."""
    for path in (ROOT / "router" / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                assert all(a.name == "Random" for a in node.names), f"{path}: from random"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
            ):
                assert node.attr == "Random", f"{path} uses random.{node.attr}"


def test_io_modules_are_independent() -> None:
    for path in (ROOT / "router" / "io").rglob("*.py"):
        own = f"pyweave.router.io.{path.stem}"
        for name in imports_of(path):
            if name.startswith("pyweave.router.io"):
                assert name == own, f"{path} imports {name}"
            assert not name.startswith("pyweave.cli"), f"{path} imports {name}"


def test_cli_uses_only_the_api_types_of_the_router() -> None:
    for path in (ROOT / "cli").rglob("*.py"):
        for name in imports_of(path):
            if name.startswith("pyweave.router"):
                assert name in CLI_ALLOWED_ROUTER, f"{path} imports {name}"
