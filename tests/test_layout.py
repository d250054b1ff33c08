"""The package layout shows the pipeline (docs/architecture.md): which stage may import which, and every shared name
defined once. These read the source with ``ast``; a new module that breaks a rule fails here, naming the import."""

import ast
import functools
from collections import defaultdict
from pathlib import Path

import riskdecomp

PKG = Path(riskdecomp.__file__).resolve().parent

#: the stages in import order: each imports only from itself and the stages to its left (utils/ from nothing else),
#: so no two stages can import each other. The encoder side is imported against its data flow (zoo -> sources ->
#: features): featurization receives built encoders and holds the datasets, riskdecomp's own pretraining trains on
#: those datasets, a source builds its encoder (with pretrain/ for riskdecomp's recipes and backbones), and the zoo
#: validates an entry with its source's schema. docs/architecture.md draws it.
ORDER = ("utils", "features", "pretrain", "sources", "zoo", "estimators", "analysis", "report", "runner")
ALLOWED = {stage: set(ORDER[:i + 1]) for i, stage in enumerate(ORDER)}
# right of the encoder side, estimators, analysis and report see arrays and tables only
ALLOWED["estimators"] = {"estimators", "utils"}
ALLOWED["analysis"] = {"analysis", "utils"}
ALLOWED["report"] = {"report", "analysis", "estimators", "utils"}
ALLOWED["runner"] |= {"__init__"}  # the package's __version__ (in run records)


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


def test_the_stages_form_a_strict_order():
    """Every stage has its place (no cluster of stages that import each other): what a stage may import lies at or
    left of it in ORDER, and every package folder is a stage."""
    for i, stage in enumerate(ORDER):
        assert ALLOWED[stage] - {"__init__"} <= set(ORDER[:i + 1]), stage
        assert stage in ALLOWED[stage]
    pairs = [(a, b) for a in ORDER for b in ORDER if a < b and b in ALLOWED[a] and a in ALLOWED[b]]
    assert not pairs, pairs
    folders = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ORDER), folders ^ set(ORDER)


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(("riskdecomp",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def _imports(name: str, rel: Path, tree, modules: set):
    """``(line, imported module, imported name or None)`` for every import of a riskdecomp module in ``tree``,
    function-local ones included; ``from package import submodule`` imports the submodule."""
    package = name if rel.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "riskdecomp":
                    yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "riskdecomp":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield (node.lineno, sub, None) if sub in modules else (node.lineno, base, a.name)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.lru_cache(maxsize=1)
def _import_graph():
    trees = {_module_name(rel): (rel, tree) for rel, tree in _modules()}
    modules = set(trees)
    edges, private = defaultdict(dict), []
    for name, (rel, tree) in trees.items():
        aliases = {}  # local names bound to riskdecomp modules: their underscore attributes are private names too
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    full = (f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) and node.module
                            else a.name)
                    if full in modules and (a.asname or isinstance(node, ast.ImportFrom)):
                        aliases[a.asname or a.name] = full
        for line, target, imported in _imports(name, rel, tree, modules):
            if target != name and target in modules:
                edges[name].setdefault(target, line)
            hidden = [p for p in target.split(".") if _private(p)] + ([imported] if imported and _private(imported)
                                                                      else [])
            if target != name and hidden:
                private.append(f"{rel}:{line} imports {target}{'.' + imported if imported else ''}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] != name):
                private.append(f"{rel}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return modules, edges, private


def _cycles(modules: set, edges: dict) -> list:
    """One cycle (``a -> b -> ... -> a``) per strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(modules):
        if v not in index:
            visit(v)
    out = []
    for group in groups:  # walk inside the group from its first module back to it
        start = min(group)
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in edges[path[-1]] if w in group)
            back = [w for w in nxt if w == start]
            if back or not nxt:
                break
            step = next((w for w in nxt if w not in seen), nxt[0])
            if step in seen:
                path = path[path.index(step):]
                break
            path.append(step)
            seen.add(step)
        out.append(" -> ".join(path + [path[0]]) + f" ({len(group)} modules in the cycle: {sorted(group)})")
    return out


def test_no_import_cycle_among_the_modules():
    """Imports between the package's modules form no cycle, counting function-local imports: an import moved into
    a function to dodge a cycle is still an import, and a module that needs another module's code has it below it."""
    modules, edges, _ = _import_graph()
    assert "riskdecomp.sources.timm" in modules and edges["riskdecomp.sources.timm"]
    cycles = _cycles(modules, edges)
    assert not cycles, "\n".join(cycles)


def test_no_module_imports_another_modules_private_names():
    """A name that starts with ``_`` is its module's own: another module that needs it gets a public name (moved to
    where both can import it), never ``from m import _name`` or ``m._name``."""
    _, _, private = _import_graph()
    assert not private, "\n".join(private)


def test_the_encoder_side_flows_one_way():
    """What issue 23 asked, said directly: featurization never imports the sources or the zoo, pretraining never
    imports the sources or the zoo, and building a timm encoder lives in its source, not in featurization."""
    modules, edges, _ = _import_graph()
    stage = lambda module: (module.split(".") + ["__init__"])[1]  # noqa: E731
    wrong = [f"{m} imports {t}" for m in sorted(modules) if stage(m) in ("features", "pretrain")
             for t in edges[m] if stage(t) in ("sources", "zoo")]
    assert not wrong, wrong
    import riskdecomp.features.encoders as enc
    import riskdecomp.sources.timm as timm_source

    assert not [n for n in vars(enc) if "timm" in n.lower()]
    assert callable(timm_source.create_timm) and callable(timm_source.timm_transform)


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
