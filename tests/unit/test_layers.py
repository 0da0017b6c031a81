"""Layering: what each part of the package may import, from its source (every import statement, lazy ones too)."""

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sparselens"
LIBRARY = (  # everything but tasks/, flows/ and the CLI
    "sparselens.config",
    "sparselens.data",
    "sparselens.models",
    "sparselens.kernels",
    "sparselens.storage",
    "sparselens.analysis",
    "sparselens.viz",
    "sparselens.capture",
    "sparselens.interpret",
    "sparselens.phase2",
    "sparselens.training",
    "sparselens.evaluation",
    "sparselens.metrics",
    "sparselens.runs",
)


def module_path(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every module an import statement of module `name` names (including `from pkg import submodule`)."""
    tree = ast.parse(module_path(name).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if module_path(f"{node.module}.{a.name}")}
    return frozenset(out)


def closure(*starts: str) -> set[str]:
    """The sparselens modules `starts` (packages: all their modules) reach, and every module they import."""
    todo = [
        str(p.relative_to(PACKAGE.parent).with_suffix("")).replace("/", ".").removesuffix(".__init__")
        for s in starts
        for p in (
            [module_path(s)] if module_path(s).name != "__init__.py" else sorted(module_path(s).parent.rglob("*.py"))
        )
    ]
    seen, reached = set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports_of(name):
            reached.add(imported)
            parts = imported.split(".")
            for i in range(2, len(parts) + 1):  # a package's __init__ runs too
                if parts[0] == "sparselens" and module_path(".".join(parts[:i])):
                    todo.append(".".join(parts[:i]))
    return reached | seen


def under(names: set[str], *packages: str) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in packages))


@pytest.mark.parametrize(
    ("starts", "forbidden"),
    [
        (LIBRARY, ("prefect", "sparselens.tasks", "sparselens.flows")),  # library code never imports Prefect
        (("sparselens.storage",), ("sparselens.models", "sparselens.config", "sparselens.training")),
        (
            ("sparselens.analysis",),
            ("sparselens.viz", "sparselens.phase2", "sparselens.storage", "sparselens.models", "dask"),
        ),
        (("sparselens.viz",), ("sparselens.phase2", "sparselens.capture", "sparselens.interpret", "dask")),
        (("sparselens.capture",), ("sparselens.evaluation",)),
    ],
    ids=["library-no-prefect", "storage", "analysis", "viz", "capture"],
)
def test_import_layers(starts, forbidden):
    assert under(closure(*starts), *forbidden) == []


def test_the_import_walk_sees_lazy_imports():
    assert "sparselens.models" in closure("sparselens.training")  # a module-level import
    assert "torch" in imports_of("sparselens.masks")  # imported inside the function that needs it


def test_a_saved_model_loads_in_a_process_that_never_imported_the_models(tmp_path):
    """RunStore.load_model works from `sparselens.storage` alone (the file names its model class)."""
    import torch

    from sparselens.models import ModelConfig, build_model
    from sparselens.storage import RunStore

    cfg = ModelConfig(attention="dsa", n_layers=1, d_model=16, n_heads=2, max_seq_len=32, indexer_dim=8, topk=4)
    torch.manual_seed(0)
    RunStore(str(tmp_path), "r").save_model("dsa", build_model(cfg))
    code = (
        "from sparselens.storage import RunStore\n"
        f"m = RunStore({str(tmp_path)!r}, 'r').load_model('dsa')\n"
        "print(type(m).__module__, m.cfg.topk, m.training)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sparselens.models.gpt", "4", "False"]
