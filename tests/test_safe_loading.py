"""Lint: the package never unpickles untrusted data (no pickle.load, allow_pickle=True, torch.load without
weights_only=True, yaml.load / unsafe_load)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "riskdecomp"


def unsafe_calls(source: str) -> list:
    """(line, reason) for every unsafe loading call in ``source``."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords}
        truthy = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
        if owner in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"):
            problems.append((node.lineno, f"{owner}.{name}"))
        if owner == "torch" and name == "load" and not truthy(kw.get("weights_only")):
            problems.append((node.lineno, "torch.load without weights_only=True"))
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            problems.append((node.lineno, f"yaml.{name}"))
        if "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
            problems.append((node.lineno, "allow_pickle not False"))
    return problems


def test_checker_flags_known_bad_code():
    bad = (
        "import pickle, torch, yaml, numpy as np\n"
        "pickle.load(f)\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "yaml.load(s)\n"
        "np.load(p, allow_pickle=True)\n"
        "torch.load(p, weights_only=True)\n"
        "yaml.safe_load(s)\n"
        "np.load(p, allow_pickle=False)\n"
    )
    assert [line for line, _ in unsafe_calls(bad)] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_package_has_no_unsafe_loading(path):
    assert unsafe_calls(path.read_text()) == []
