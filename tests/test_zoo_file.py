"""The zoo file's shorthand: deep-merged ``defaults:``, ``base:``, ``sweep:``, recipe-derived metadata, and the
``zoo list --expanded`` / ``zoo check`` commands (through the CLI, as users run them)."""

import textwrap
from pathlib import Path

import pytest
import yaml

from riskdecomp.cli import main
from riskdecomp.pretrain.backbones import build_recipe_encoder, count_parameters
from riskdecomp.pretrain.recipe import Recipe
from riskdecomp.zoo import load_zoo

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name="zoo.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def expanded(path: Path, capsys) -> list:
    """The final entries, as `riskdecomp zoo list --expanded` prints them."""
    capsys.readouterr()
    main(["zoo", "list", "--zoo", str(path), "--expanded"])
    return yaml.safe_load(capsys.readouterr().out)["models"]


def check_error(path: Path, capsys) -> str:
    """`riskdecomp zoo check` of a bad zoo: exit 2 and one line `riskdecomp: error: ...` naming the file."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["zoo", "check", "--zoo", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("riskdecomp: error: ") and str(path) in err[0], err
    return err[0]


def test_defaults_deep_merge_into_recipes(tmp_path, capsys):
    # the trap: a shallow merge gave `byol` the Recipe defaults (width 32, 10 epochs), silently
    zoo = write(tmp_path, """
        defaults:
          source: recipe
          recipe: {objective: simclr, width: 8, epochs: 3, head: {kind: mlp, width: 16}}
          metadata: {pretraining_data: digits, notes: shared}
        models:
          - name: byol
            recipe: {objective: byol, head: {out_dim: 8}}
            metadata: {notes: mine}
          - name: plain
          - name: hub
            source: timm
            model: resnet18
            pretrained: false
    """)
    byol, plain, hub = expanded(zoo, capsys)
    assert byol["recipe"]["objective"] == "byol"
    assert (byol["recipe"]["width"], byol["recipe"]["epochs"]) == (8, 3)
    assert byol["recipe"]["head"] == {"kind": "mlp", "depth": 2, "width": 16, "out_dim": 8}
    assert byol["metadata"]["notes"] == "mine" and byol["metadata"]["pretraining_data"] == "digits"
    assert plain["recipe"]["objective"] == "simclr" and plain["metadata"]["notes"] == "shared"
    # a default applies only to entries whose source has that field: the timm entry gets no recipe
    assert "recipe" not in hub and hub["metadata"]["notes"] == "shared"


def test_base_extends_an_entry_recursively(tmp_path, capsys):
    zoo = write(tmp_path, """
        defaults: {source: recipe}
        models:
          - name: a
            recipe: {objective: simclr, z_dim: 16, head: {kind: mlp, width: 32}}
            metadata: {notes: from a}
          - name: c
            base: b
            recipe: {epochs: 2}
          - name: b
            base: a
            recipe: {head: {depth: 3}}
            reference: a
    """)
    a, c, b = expanded(zoo, capsys)
    assert c["name"] == "c" and b["name"] == "b"
    assert b["recipe"]["head"] == {"kind": "mlp", "depth": 3, "width": 32, "out_dim": 64}
    assert c["recipe"]["head"] == b["recipe"]["head"] and c["recipe"]["z_dim"] == 16 and c["recipe"]["epochs"] == 2
    assert c["reference"] == "a" and c["metadata"]["notes"] == "from a"
    assert a["recipe"]["epochs"] == 10 and "reference" not in a


def test_sweep_one_choice_at_a_time_and_grid(tmp_path, capsys):
    zoo = write(tmp_path, """
        models:
          - name: simclr
            source: recipe
            recipe: {objective: simclr, z_dim: 64, epochs: 10}
            sweep: {z_dim: [16, 32], epochs: [5], head.kind: {nohead: none}, metadata.notes: [x]}
          - name: g
            source: recipe
            recipe: {objective: byol}
            sweep: {z_dim: [8, 16], augment.blur: [true]}
            sweep_mode: grid
    """)
    entries = {e["name"]: e for e in expanded(zoo, capsys)}
    assert list(entries) == ["simclr", "simclr_z_dim16", "simclr_z_dim32", "simclr_epochs5", "simclr_nohead",
                             "simclr_metadata_notesx", "g", "g_z_dim8_augment_blurtrue", "g_z_dim16_augment_blurtrue"]
    base = entries["simclr"]["recipe"]

    def changed(name):
        r = entries[name]["recipe"]
        return {k for k in r if r[k] != base[k]}

    assert changed("simclr_z_dim16") == {"z_dim"} and entries["simclr_z_dim16"]["recipe"]["epochs"] == 10
    assert changed("simclr_epochs5") == {"epochs"} and entries["simclr_epochs5"]["recipe"]["z_dim"] == 64
    assert changed("simclr_nohead") == {"head"} and entries["simclr_nohead"]["recipe"]["head"]["kind"] == "none"
    assert changed("simclr_metadata_notesx") == set() and entries["simclr_metadata_notesx"]["metadata"]["notes"] == "x"
    assert entries["g_z_dim16_augment_blurtrue"]["recipe"]["augment"]["blur"] is True
    assert entries["g_z_dim16_augment_blurtrue"]["recipe"]["z_dim"] == 16
    # the metadata follows each variant's recipe
    assert entries["simclr_z_dim16"]["metadata"]["z_dim"] == 16 and entries["simclr"]["metadata"]["z_dim"] == 64


BAD = [
    # (models body, substrings of the one-line error)
    ("- {name: a, base: ghost, source: recipe, recipe: {objective: simclr}}", ["('a')", "'base'", "unknown model 'ghost'"]),
    ("- {name: a, base: b, source: recipe, recipe: {objective: simclr}}\n- {name: b, base: a}",
     ["'base'", "cycle a -> b -> a"]),
    ("- {name: a, base: a, source: recipe, recipe: {objective: simclr}}", ["'base'", "cycle"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {}}", ["('a')", "'sweep'", "non-empty"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {z_dim: []}}", ["'sweep.z_dim'", "empty"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {z_dim: 16}}", ["'sweep.z_dim'", "list"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {head: [{kind: none}]}}",
     ["'sweep.head'", "{label: value}"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {zdim: [16]}}", ["'sweep.zdim'", "unknown field"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {head.colour: [1]}}",
     ["'sweep.head.colour'", "unknown field 'recipe.head.colour'"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {name: [b]}}", ["'sweep.name'", "cannot sweep"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {z_dim: [16]}, sweep_mode: all}",
     ["'sweep_mode'", "'all'"]),
    ("- {name: a_z_dim16, source: recipe, recipe: {objective: byol}}\n"
     "- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {z_dim: [16]}}",
     ["sweep variant 'a_z_dim16'", "duplicate name"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr}, sweep: {z_dim: [-1]}}",
     ["sweep variant 'a_z_dim-1'", "recipe.z_dim"]),
    ("- {name: a, source: recipe, recipe: {objective: simclr, z_dim: 32}, metadata: {z_dim: 64}}",
     ["('a')", "'metadata.z_dim'", "contradicts the recipe (32)"]),
    ("- {name: a, source: recipe, recipe: {objective: init}, metadata: {epochs: 10}}", ["'metadata.epochs'", "(0)"]),
]


@pytest.mark.parametrize("models,needles", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_shorthand_is_one_line_error(tmp_path, capsys, models, needles):
    path = write(tmp_path, "models:\n" + textwrap.indent(models, "  ") + "\n")
    msg = check_error(path, capsys)
    for n in needles:
        assert n in msg, (n, msg)


def test_recipe_metadata_is_derived(tmp_path, capsys):
    zoo = write(tmp_path, """
        models:
          - name: s
            source: recipe
            recipe: {objective: simclr, z_dim: 32, batch_size: 64, augment: {color_jitter: false, blur: true},
                     head: {kind: mlp, depth: 3, width: 100}}
            metadata: {z_dim: 32, pretraining_data: digits}   # agreeing with the recipe is allowed
          - name: i
            source: recipe
            recipe: {objective: init}
    """)
    s, i = expanded(zoo, capsys)
    m = s["metadata"]
    assert m["pretraining_data"] == "digits" and m["objective"] == "simclr" and m["ssl_mode"] == "contrastive"
    assert (m["z_dim"], m["batch_size"], m["n_negatives"], m["nviews"]) == (32, 64, 126, 2)
    assert m["augmentations"] == ["crop", "gray", "blur", "normalize"] and m["n_augmentations"] == 4
    assert m["is_aug_color"] is False and m["is_aug_blur"] is True
    assert (m["projection2_arch"], m["projection_hid_depth"], m["projection_hid_width"]) == ("mlp", 2, 100)
    assert m["n_parameters"] == count_parameters(build_recipe_encoder(Recipe(**s["recipe"])).backbone)
    assert i["metadata"]["epochs"] == 0 and i["metadata"]["augmentations"] == ["normalize"]
    assert i["metadata"]["ssl_mode"] == "initialized" and i["metadata"]["projection2_arch"] is None


def test_zoo_check_ok_and_expanded_reloads_identically(tmp_path, capsys):
    main(["zoo", "check", "--zoo", str(ROOT / "model_zoo.yaml")])
    n = len(load_zoo(ROOT / "model_zoo.yaml"))
    assert capsys.readouterr().out.strip() == f"ok: {n} entries"
    mixed = write(tmp_path, """
        defaults: {metadata: {year: 2020}}
        models:
          - {name: t, source: timm, model: resnet18, pretrained: false, representation: avg}
          - {name: c, source: checkpoint, architecture: resnet18, weights: w/c.safetensors, strict: false, reference: t}
          - {name: h, source: torch_hub, repo: a/b, entrypoint: e, trust_repo: true}
          - {name: f, source: features, path: f.npz}
    """, "mixed.yaml")
    for zoo in (ROOT / "model_zoo.yaml", mixed):
        out = tmp_path / "explicit.yaml"
        out.write_text(yaml.safe_dump({"models": expanded(zoo, capsys)}))
        assert load_zoo(out).entries == load_zoo(zoo).entries
    with pytest.raises(SystemExit) as info:
        main(["zoo", "list", "--zoo", str(out), "--expanded", "--format", "csv"])
    assert info.value.code == 2 and "--expanded" in capsys.readouterr().err
