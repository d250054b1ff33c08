"""The package layout shows the pipeline (docs/architecture.md): which stage may import which, and every shared name
defined once. These read the source with ``ast``; a new module that breaks a rule fails here, naming the import."""

import ast
from collections import defaultdict
from pathlib import Path

import riskdecomp

PKG = Path(riskdecomp.__file__).resolve().parent

#: the encoder side (what to evaluate, where encoders come from, how images become arrays) is one cluster: a zoo
#: entry is validated by its source's schema, a recipe source trains with pretrain/, features/ builds encoders through
#: the sources. Everything right of it sees arrays and tables only.
ENCODER_SIDE = {"zoo", "sources", "pretrain", "features"}
ALLOWED = {
    "utils": {"utils"},
    **{s: ENCODER_SIDE | {"utils"} for s in ENCODER_SIDE},
    "estimators": {"estimators", "utils"},
    "analysis": {"analysis", "utils"},
    "report": {"report", "analysis", "estimators", "utils"},
    "runner": ENCODER_SIDE | {"runner", "estimators", "analysis", "utils", "__init__"},
}


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG)
        yield rel, ast.parse(p.read_text(encoding="utf-8"))


def _stage(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_stage_imports_only_from_the_stages_it_may_use():
    bad = []
    stages = set()
    for rel, tree in _modules():
        me = _stage(rel)
        stages.add(me)
        if me not in ALLOWED:  # cli.py and the package's __init__ sit on top
            assert me in ("cli", "__init__"), f"{rel}: a module outside the staged layout"
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "riskdecomp":
                parts = node.module.split(".")
                targets = [parts[1]] if len(parts) > 1 else [a.name if (PKG / a.name).exists()
                                                             or (PKG / f"{a.name}.py").exists() else "__init__"
                                                             for a in node.names]
                bad += [f"{rel}:{node.lineno} imports riskdecomp.{t}" for t in targets if t not in ALLOWED[me]]
    assert not bad, "\n".join(bad)
    assert {"zoo", "sources", "features", "estimators", "analysis", "report", "pretrain", "utils", "runner",
            "cli"} <= stages


def test_no_module_level_name_is_defined_twice():
    """A column list, a device rule, a writer, a class: one definition. Exempt: a module's own ``log`` and
    ``__all__``, and cli.py's command functions (named for the commands they run, thin shells over the API)."""
    where = defaultdict(list)
    for rel, tree in _modules():
        if rel.name == "cli.py":
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [e.id for t in node.targets for e in ast.walk(t) if isinstance(e, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            for n in names:
                where[n].append(str(rel))
    twice = {n: ps for n, ps in where.items() if len(ps) > 1 and n not in ("log", "__all__")}
    assert not twice, twice


def test_the_public_api_resolves_from_the_package():
    import riskdecomp as rd

    for name in ("evaluate", "Settings", "build", "load_zoo", "load_dataset", "featurize", "LinearProbe",
                 "tune_probe", "decompose", "fewshot_errors", "make_report", "RiskdecompError"):
        obj = getattr(rd, name)
        assert obj.__module__.startswith("riskdecomp."), (name, obj.__module__)
    assert rd.LinearProbe.__module__ == "riskdecomp.estimators.probe"
    assert rd.evaluate.__module__ == "riskdecomp.runner.pipeline"
