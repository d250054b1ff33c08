"""The zoo registry: valid files load into typed entries; every bad entry is one line naming file, entry, field."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from riskdecomp.utils.errors import ZooError
from riskdecomp.zoo import CheckpointEntry, RecipeEntry, TimmEntry, load_zoo, parse_zoo

GOOD = textwrap.dedent("""
    defaults:
      metadata: {pretraining_data: digits, year: 2026}
    models:
      - name: sup
        source: timm
        model: resnet18
        pretrained: false
        metadata: {objective: supervised, architecture: resnet18}
      - name: mine
        source: checkpoint
        architecture: resnet18
        weights: w/mine.safetensors
        reference: sup
        metadata: {objective: SimCLR, year: 2020}
      - name: simclr
        source: recipe
        recipe: {objective: simclr, epochs: 1}
      - name: npz
        source: features
        path: feats.npz
""")


def write(tmp_path: Path, text: str, name="zoo.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_zoo_loads_typed_entries_with_defaults_and_resolved_paths(tmp_path):
    zoo = load_zoo(write(tmp_path, GOOD))
    assert zoo.names == ["sup", "mine", "simclr", "npz"]
    assert isinstance(zoo["sup"], TimmEntry) and isinstance(zoo["mine"], CheckpointEntry)
    assert isinstance(zoo["simclr"], RecipeEntry) and zoo["simclr"].recipe.epochs == 1
    # defaults merged key by key, the entry wins
    assert zoo["mine"].metadata == {"pretraining_data": "digits", "year": 2020, "objective": "SimCLR"}
    assert zoo["sup"].metadata["year"] == 2026
    # relative paths are resolved against the zoo file's folder
    assert zoo["mine"].weights == (tmp_path / "w" / "mine.safetensors").resolve()
    assert zoo["npz"].path == (tmp_path / "feats.npz").resolve()
    assert list(zoo.to_frame()["name"]) == zoo.names


BAD = [
    # (yaml body, substrings the one-line error must contain)
    ("models:\n  - name: a\n    source: nope\n", ["models[0] ('a')", "source", "unknown source 'nope'"]),
    ("models:\n  - name: a\n    source: timm\n", ["models[0] ('a')", "'model'", "required"]),
    ("models:\n  - name: a\n    source: timm\n    model: r\n    pretrained: false\n    colour: red\n", ["'colour'", "unknown field"]),
    ("models:\n  - name: a\n    source: timm\n    model: [1, 2]\n", ["'model'", "string"]),
    ("models:\n  - name: a\n    source: timm\n    model: r\n    pretrained: false\n  - name: a\n    source: timm\n    model: s\n    pretrained: false\n",
     ["models[1] ('a')", "duplicate name"]),
    ("models:\n  - name: ../x\n    source: timm\n    model: r\n    pretrained: false\n", ["'../x'", "'name'"]),
    ("models:\n  - name: /abs\n    source: timm\n    model: r\n    pretrained: false\n", ["'/abs'", "'name'"]),
    ("models:\n  - name: Big\n    source: timm\n    model: r\n    pretrained: false\n", ["'Big'", "'name'"]),
    ("models:\n  - name: h\n    source: torch_hub\n    repo: a/b\n    entrypoint: e\n", ["trust_repo"]),
    ("models:\n  - name: h\n    source: torch_hub\n    repo: a/b\n    entrypoint: e\n    trust_repo: false\n",
     ["trust_repo"]),
    ("models:\n  - name: a\n    source: timm\n    model: r\n    pretrained: false\n    representation: mean\n", ["representation", "'mean'"]),
    ("models:\n  - name: a\n    source: timm\n    model: r\n    pretrained: false\n    reference: ghost\n", ["'reference'", "'ghost'"]),
    ("models:\n  - name: a\n    source: timm\n    model: r\n    pretrained: false\n    metadata: {objectiv: x}\n", ["metadata", "objectiv"]),
    ("models:\n  - name: a\n    source: recipe\n    recipe: {objective: magic}\n", ["recipe.objective"]),
    ("models:\n  - name: a\n    source: checkpoint\n    architecture: r\n    weights: w.pkl\n", ["weights", ".safetensors"]),
    ("models: [\n", ["malformed YAML", "line"]),
    ("- just a list\n", ["'models:'"]),
    ("models: []\n", ["non-empty"]),
    ("models:\n  - name: a\n    source: timm\n    model: r\n    pretrained: false\nextra: 1\n", ["top-level", "'extra'"]),
    ("models:\n  - 3\n", ["models[0]", "mapping"]),
]


@pytest.mark.parametrize("body,needles", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_zoo_gives_one_line_error_naming_the_culprit(tmp_path, body, needles):
    path = write(tmp_path, body)
    with pytest.raises(ZooError) as info:
        load_zoo(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_zoo_file(tmp_path):
    with pytest.raises(ZooError, match="not found"):
        load_zoo(tmp_path / "nope.yaml")


def test_yaml_tags_are_not_executed(tmp_path):
    body = "models:\n  - name: a\n    source: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ZooError, match="malformed YAML"):
        load_zoo(write(tmp_path, body))


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "riskdecomp.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_zoo_list_and_malformed_zoo_exit_2(tmp_path):
    good = write(tmp_path, GOOD)
    ok = _cli("zoo", "list", "--zoo", str(good), "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert lines[0].startswith("name,source") and len(lines) == 5
    bad = write(tmp_path, BAD[0][0], "bad.yaml")
    res = _cli("zoo", "list", "--zoo", str(bad))
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("riskdecomp: error:") and "Traceback" not in res.stderr
    dbg = _cli("--debug", "zoo", "list", "--zoo", str(bad))
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


def test_parse_zoo_from_python_mapping():
    zoo = parse_zoo({"models": [{"name": "x", "source": "timm", "model": "resnet18", "pretrained": False}]})
    assert zoo["x"].pretrained is False and zoo["x"].representation == "pooled"
    with pytest.raises(ZooError, match="unknown model 'y'"):
        zoo["y"]
