"""Imports point down: audio / vocab / music -> data, models -> train, infer -> entry points.

A module may import its own package and packages of a lower layer, never one of its own
layer or above (``infer`` importing ``train`` was an upward import: the trainer's state
leaking into inference). Both ``import x`` and ``from x import y`` are checked, also
inside functions.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "amt_jax"
#: layer of each top-level part of amt_jax; lower layers never import higher ones
LAYERS = {
    "heap": 0,
    "storage": 0,  # local / file:// / gs:// paths for every entry point
    "audio": 0,
    "music": 0,
    "partitioning": 0,
    "vocab": 1,
    "notes": 1,
    "metrics": 1,
    "data": 2,
    "models": 2,
    "train": 3,
    "infer": 3,
    "demo": 4,
    "transcribe": 4,
    "evaluate": 4,
}
#: entry points inside a package (they wire the packages together)
ENTRY_POINTS = {"train/main.py", "train/__main__.py", "train/configurables.py"}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "amt_jax" and len(parts) > 1 else None


def imported_parts(path: pathlib.Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        parts.update(p for p in map(_part, names) if p is not None)
    return parts


def violations(package: pathlib.Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        own = relative.split("/")[0].removesuffix(".py")
        if own not in LAYERS or relative in ENTRY_POINTS or relative == "__init__.py":
            continue
        for part in imported_parts(path) - {own}:
            if part in LAYERS and LAYERS[part] >= LAYERS[own]:
                found.append(f"amt_jax/{relative} imports amt_jax.{part}")
    return found


def test_every_package_has_a_layer():
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()}
    parts = {p for p in parts if not p.startswith("__") and p != "filterbanks"}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_imports_point_down():
    assert violations() == []


@pytest.mark.parametrize(
    "module, source",
    [
        ("models/x.py", "from amt_jax.infer import postprocess"),
        ("infer/x.py", "from amt_jax.train.train_state import merge_model"),
        ("models/x.py", "def f():\n    import amt_jax.train.loop\n"),
    ],
)
def test_an_upward_import_is_caught(tmp_path, module, source):
    target = tmp_path / module
    target.parent.mkdir(parents=True)
    target.write_text(source)
    assert len(violations(tmp_path)) == 1
