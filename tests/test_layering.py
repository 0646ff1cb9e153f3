"""The import rule: a package imports only from the floors below it, never back up.

The floors, from the ground up, are :data:`FLOORS`; ``docs/DEVELOPER.md``
explains them. Every ``import`` counts, at module level or inside a
function (a lazy import is still a dependency), ``TYPE_CHECKING`` ones too.
Two units of one floor do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cem_node"

FLOORS: tuple[tuple[str, ...], ...] = (
    (
        "contracts",
    ),  # what every stage shares: findings, analysis request and results, bundle schema
    ("config",),
    ("logs",),
    ("dicom.selection", "dicom.identifiers", "dicom.validation"),  # reading what arrives
    ("dicom.objects",),  # the result objects we write
    ("store",),
    ("peers",),
    ("dicom.net",),  # associations: SCP, SCU, access, TLS
    ("models",),  # the bundle format and registry (no torch)
    ("pipeline",),  # the analysis of one study
    ("jobs",),  # rounds, claims, the worker, export
    ("monitoring",),
    ("node",),
    ("receiver",),
    ("synthetic",),
    ("training",),
    ("cli",),
    ("__main__",),
)
"""Units (``cem_node.<unit>``), lowest floor first; ``cem_node`` itself (the version) is
below all."""


def _unit_of(module: str) -> str | None:
    """The unit of a ``cem_node`` module, or None for the package root."""
    parts = module.split(".")[1:]
    for size in (2, 1):
        name = ".".join(parts[:size])
        if any(name in floor for floor in FLOORS):
            return name
    return None


def _floor_of(unit: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if unit in floor)


def _module_name(path: Path, source: Path = SOURCE) -> str:
    parts = list(path.relative_to(source.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, source: Path) -> list[tuple[int, str]]:
    """(line, module) of every cem_node module the file imports (``from x import y``: x and x.y)."""
    module = _module_name(path, source)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "cem_node"]


def upward_imports(source: Path = SOURCE) -> list[str]:
    """Every import that breaks the rule, as ``file:line: unit -> unit``."""
    broken = []
    for path in sorted(source.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        unit = _unit_of(_module_name(path, source))
        if unit is None:
            continue
        for line, target in _imported(path, source):
            other = _unit_of(target)
            if other is None or other == unit:
                continue
            if _floor_of(other) >= _floor_of(unit):
                where = path.relative_to(source.parent)
                broken.append(f"{where}:{line}: {unit} -> {other} ({target})")
    return sorted(set(broken))


def test_every_unit_has_a_floor() -> None:
    units = {
        p.stem if p.is_file() else p.name
        for p in SOURCE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    dicom = {f"dicom.{p.stem if p.is_file() else p.name}" for p in (SOURCE / "dicom").iterdir()}
    dicom = {u for u in dicom if u not in ("dicom.__init__", "dicom.__pycache__")}
    missing = sorted(u for u in units | dicom if u != "dicom" and _unit_of(f"cem_node.{u}") is None)
    assert not missing, f"give these a floor in FLOORS: {missing}"


def test_no_import_runs_back_up() -> None:
    broken = upward_imports()
    assert not broken, "imports against the floors (docs/DEVELOPER.md):\n" + "\n".join(broken)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    tree = tmp_path / "cem_node"
    (tree / "contracts").mkdir(parents=True)
    (tree / "contracts" / "__init__.py").write_text("")
    (tree / "contracts" / "findings.py").write_text("from cem_node.jobs import worker\n")
    (tree / "jobs").mkdir()
    (tree / "jobs" / "worker.py").write_text(
        "def f():\n    from cem_node.contracts import findings\n"
    )
    assert upward_imports(tree) == [
        "cem_node/contracts/findings.py:1: contracts -> jobs (cem_node.jobs)",
        "cem_node/contracts/findings.py:1: contracts -> jobs (cem_node.jobs.worker)",
    ]


@pytest.mark.parametrize("module", ["cem_node.contracts", "cem_node.models"])
def test_low_floors_do_not_load_torch(module: str) -> None:
    """The contracts and the bundle registry load without torch (a receiver never needs it)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
