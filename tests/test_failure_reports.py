"""Failures reported the way the CLI promises (issue 24, classes 5, 8 and 9): a failed model is one line (its
traceback too with ``--debug``, from worker processes as well), bad input one line and exit 2, the zoo read once
(``--zoo /dev/stdin``), zoo errors that name the entry as written, and baseline contrasts with two ``init`` models.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from zoo_factory import FAST, make_features_zoo, run_cli

from riskdecomp.pretrain.backbones import create_backbone

TRACEBACK = "Traceback (most recent call last)"
# a ViT with one block asked for its last 4 blocks' CLS tokens: it builds and loads, and its forward raises
# (an AssertionError inside timm, not a riskdecomp error): a cheap, reliable encoder failure
FAILING = """
  - name: {name}
    source: checkpoint
    architecture: vit_tiny_patch16_224
    weights: vit.safetensors
    representation: 4xcls
    model_kwargs: {{img_size: 32, depth: 1, embed_dim: 24, num_heads: 2}}
"""


@pytest.fixture(scope="module")
def digits_zoo(tmp_path_factory):
    """``good`` (a small CNN) and ``bad`` / ``bad2`` (whose forward fails) on digits."""
    import timm

    root = tmp_path_factory.mktemp("failzoo")
    torch.manual_seed(0)
    save_file(create_backbone("smallcnn", width=4, z_dim=8).state_dict(), str(root / "cnn.safetensors"))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1,
                            embed_dim=24, num_heads=2)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "vit.safetensors"))
    good = """
      - name: good
        source: checkpoint
        architecture: smallcnn
        weights: cnn.safetensors
        model_kwargs: {width: 4, z_dim: 8}
    """
    (root / "zoo.yaml").write_text("models:\n" + textwrap.indent(textwrap.dedent(good), "  ")
                                   + FAILING.format(name="bad"))
    (root / "zoo2.yaml").write_text((root / "zoo.yaml").read_text() + FAILING.format(name="bad2"))
    return root


def _featurize(zoo, cache, *flags):
    return run_cli(*flags, "featurize", "--zoo", str(zoo), "--dataset", "digits", "--cache-dir", str(cache),
                   "--no-progress")


# ------------------------------------------------------------------------------------------------ featurize
def test_featurize_with_a_failing_encoder_writes_the_others_then_one_line_and_exit_1(digits_zoo, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert _featurize(digits_zoo / "zoo.yaml", cache) == 1
    out, err = capsys.readouterr()
    assert "good: train (1257, 8), test (540, 8), computed" in out
    assert TRACEBACK not in err
    lines = err.strip().splitlines()
    assert lines == ["riskdecomp: model 'bad' failed: AssertionError: last-n (4) is out of range (1 to 1)",
                     "riskdecomp: 1 model(s) failed"]
    assert len(list((cache / "features").glob("good/*.npy"))) == 2  # both splits of the good encoder
    assert not list((cache / "features").glob("bad/*.npy"))
    # a rerun reads the good encoder's features from the cache and still reports the failure
    assert _featurize(digits_zoo / "zoo.yaml", cache) == 1
    assert "good: train (1257, 8), test (540, 8), cached" in capsys.readouterr().out


def test_featurize_names_every_failed_encoder_and_debug_prints_each_traceback(digits_zoo, tmp_path, capsys):
    assert _featurize(digits_zoo / "zoo2.yaml", tmp_path / "cache", "--debug") == 1
    out, err = capsys.readouterr()
    assert "good: train" in out
    assert err.count(TRACEBACK) == 2 and err.count("feature_take_indices") >= 2  # the frames where it failed
    assert "riskdecomp: model 'bad' failed: AssertionError" in err
    assert "riskdecomp: model 'bad2' failed: AssertionError" in err
    assert err.strip().splitlines()[-1] == "riskdecomp: 2 model(s) failed"


# ------------------------------------------------------------------------------------------------ evaluate --debug
EVAL = ["--dataset", "digits", "--n-boot", "20", "--fewshot-seeds", "1", "--shots", "1", "--fractions", "0.1",
        "--no-active", "--no-uncertainty", "--no-statistics", "--no-report", "--no-progress"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_evaluate_debug_prints_a_failed_models_traceback(digits_zoo, tmp_path, jobs):
    """With --jobs 2 the job runs in a worker process: its traceback comes back as text."""
    argv = [sys.executable, "-m", "riskdecomp.cli", "evaluate", "--zoo", str(digits_zoo / "zoo.yaml"), "--out",
            str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--jobs", jobs, *EVAL]
    if jobs == "1":  # (the same without --debug in a worker: slow to start, and the one line is all either way)
        plain = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
        assert plain.returncode == 1, plain.stderr
        assert TRACEBACK not in plain.stderr
        # the stage it failed in, then why (issue 24, class 5)
        assert "riskdecomp: model 'bad' failed: featurize: AssertionError: last-n (4) is out of range (1 to 1)" \
            in plain.stderr
    debug = subprocess.run(argv + ["--debug"], capture_output=True, text=True, cwd=tmp_path)
    assert debug.returncode == 1, debug.stderr
    assert debug.stderr.count(TRACEBACK) == 1
    tb = debug.stderr[debug.stderr.index(TRACEBACK):]
    assert "feature_take_indices" in tb and "AssertionError: last-n (4) is out of range" in tb
    assert "riskdecomp: model 'bad' failed" in tb  # the one line follows its traceback
    assert list(pd.read_csv(tmp_path / "out" / "leaderboard.csv")["model"]) == ["good"]


def test_a_model_whose_reference_fails_names_that_stage(digits_zoo, tmp_path, capsys):
    """Beyond the example (class 5: which model, which stage, why): a model whose reference cannot be featurized
    fails with a line that says so, not with the reference's error as if it were its own."""
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(f"models:\n  - {{name: good, source: checkpoint, architecture: smallcnn, reference: bad, "
                   f"weights: {digits_zoo / 'cnn.safetensors'}, model_kwargs: {{width: 4, z_dim: 8}}}}\n"
                   + FAILING.format(name="bad").replace("vit.safetensors", str(digits_zoo / "vit.safetensors")))
    assert run_cli("evaluate", "--zoo", str(zoo), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
                   "--jobs", "1", *EVAL) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert "riskdecomp: model 'bad' failed: featurize: AssertionError: last-n (4) is out of range (1 to 1)" in lines
    assert ("riskdecomp: model 'good' failed: features of its reference 'bad': AssertionError: last-n (4) is out of "
            "range (1 to 1)") in lines
    assert TRACEBACK not in "\n".join(lines)


# ------------------------------------------------------------------------------------------------ pretrain NaN
def test_pretrain_whose_loss_becomes_nan_is_one_line_naming_the_recipe_and_epoch(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: simclr\nwidth: 4\nz_dim: 8\nepochs: 2\nbatch_size: 64\nlr: 1.0e+30\n")
    code = run_cli("pretrain", "--recipe", str(recipe), "--dataset", "digits", "--out", str(tmp_path / "x.safetensors"))
    err = capsys.readouterr().err
    assert code == 2 and TRACEBACK not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"riskdecomp: error: recipe {recipe}: ") and "epoch 1 of 2" in line
    assert "nan" in line and "lower lr" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_pretrain_of_a_zoo_entry_whose_loss_diverges_names_the_model(tmp_path, capsys):
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n  - name: hot\n    source: recipe\n"
                   "    recipe: {objective: byol, width: 4, z_dim: 8, epochs: 1, batch_size: 64, lr: 1.0e+30}\n")
    code = run_cli("pretrain", "--zoo", str(zoo), "--model", "hot", "--dataset", "digits",
                   "--out", str(tmp_path / "x.safetensors"))
    err = capsys.readouterr().err
    assert code == 2 and TRACEBACK not in err
    assert err.strip().splitlines()[-1].startswith("riskdecomp: error: model 'hot': pretraining byol diverged")


# ------------------------------------------------------------------------------------------------ bounded integers
def _check(tmp_path, text, capsys):
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(textwrap.dedent(text))
    code = run_cli("zoo", "check", "--zoo", str(zoo))
    return code, capsys.readouterr()


@pytest.mark.parametrize("field", ["recipe: {objective: simclr, seed: 18446744073709551616}",
                                   "seeds: [0, 18446744073709551616]\n    recipe: {objective: simclr}"])
def test_a_seed_beyond_64_bits_is_refused_by_zoo_check(tmp_path, capsys, field):
    code, cap = _check(tmp_path, f"models:\n  - name: s\n    source: recipe\n    {field}\n", capsys)
    assert code == 2 and cap.out == ""
    assert cap.err.count("\n") == 1 and cap.err.startswith("riskdecomp: error: ")
    assert "models[0] ('s')" in cap.err and "seed" in cap.err


def test_the_largest_torch_seed_is_accepted(tmp_path, capsys):
    code, cap = _check(tmp_path, "models:\n  - name: s\n    source: recipe\n"
                                 "    recipe: {objective: simclr, seed: 18446744073709551615}\n", capsys)
    assert code == 0 and cap.out == "ok: 1 entries\n"
    torch.manual_seed(2**64 - 1)  # what the bound promises


@pytest.mark.parametrize("size", [0, -3])
def test_a_recipe_image_size_that_cannot_be_an_image_is_refused(tmp_path, capsys, size):
    code, cap = _check(tmp_path, "models:\n  - name: s\n    source: recipe\n"
                                 f"    recipe: {{objective: simclr, image_size: {size}}}\n", capsys)
    assert code == 2 and cap.err.startswith("riskdecomp: error: ") and "recipe.image_size" in cap.err


def test_evaluate_seed_beyond_what_scikit_learn_takes_is_one_line_before_any_compute(tmp_path, capsys):
    zoo = make_features_zoo(tmp_path / "z")
    code = run_cli("evaluate", "--zoo", str(zoo), "--out", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), "--seed", str(2**32), *FAST)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--seed" in err and TRACEBACK not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ zoo read once
def test_evaluate_reads_the_zoo_from_stdin(tmp_path):
    zoo = make_features_zoo(tmp_path / "z")  # relative paths: resolved against the working directory
    argv = [sys.executable, "-m", "riskdecomp.cli", "evaluate", "--zoo", "/dev/stdin", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--jobs", "2", *FAST]
    res = subprocess.run(argv, input=zoo.read_text(), capture_output=True, text=True, cwd=zoo.parent)
    assert res.returncode == 0, res.stderr
    assert list(pd.read_csv(tmp_path / "out" / "leaderboard.csv")["model"]) == ["sup", "good", "weak"]


def test_jobs_use_the_zoo_as_read_not_the_file_edited_since(tmp_path):
    from riskdecomp.runner.pipeline import evaluate
    from riskdecomp.runner.records import Settings
    from riskdecomp.zoo import load_zoo

    path = make_features_zoo(tmp_path / "z")
    zoo = load_zoo(path)
    path.write_text("models: [")  # edited (here: broken) after the run started
    res = evaluate(zoo, "synth", tmp_path / "out", cache_dir=tmp_path / "cache", jobs=1,
                   settings=Settings(n_boot=20, fewshot_seeds=1, shots=(1,), fractions=(0.1,), uncertainty=False,
                                     active=False, statistics=False, progress=False))
    assert res.ok and list(res.leaderboard["model"]) == ["sup", "good", "weak"]


# ------------------------------------------------------------------------------------------------ zoo error labels
RECIPE = "{objective: simclr, width: 4, z_dim: 8, epochs: 1}"


def test_a_seed_error_in_a_sweep_variant_names_the_entry_as_written(tmp_path, capsys):
    code, cap = _check(tmp_path, f"""
        defaults:
          seeds: [0, 1]
        models:
          - name: s
            source: recipe
            recipe: {RECIPE}
            sweep: {{seed: [5]}}
    """, capsys)
    assert code == 2
    assert "models[0] ('s') sweep variant 's_seed5': field 'seeds'" in cap.err and "models[1]" not in cap.err


def test_an_entry_after_a_swept_one_is_named_by_its_index_in_the_file(tmp_path, capsys):
    code, cap = _check(tmp_path, f"""
        models:
          - name: a
            source: recipe
            recipe: {RECIPE}
            sweep: {{z_dim: [4, 16]}}
          - name: b
            source: recipe
            seeds: [1, -1]
            recipe: {RECIPE}
    """, capsys)
    assert code == 2 and "models[1] ('b'): field 'seeds'" in cap.err and "models[3]" not in cap.err


def test_a_reference_without_the_seed_names_the_entry_and_seed(tmp_path, capsys):
    code, cap = _check(tmp_path, f"""
        models:
          - name: sup
            source: recipe
            seeds: [0]
            recipe: {{objective: supervised, width: 4, z_dim: 8, epochs: 1}}
          - name: ssl
            source: recipe
            seeds: [0, 1]
            reference: sup
            recipe: {RECIPE}
    """, capsys)
    assert code == 2 and "models[1] ('ssl') seed 1: field 'reference': 'sup' has no seed 1" in cap.err


# ------------------------------------------------------------------------------------------------ baseline contrasts
def _seeded_tables(root: Path, models: dict) -> Path:
    """leaderboard.csv + leaderboard_seeds.csv for ``{model: (objective, mean agg_risk)}``, 3 seeds each."""
    rng = np.random.default_rng(0)
    board, seeds = [], []
    for m, (objective, mean) in models.items():
        vals = mean + rng.normal(0, 0.5, 3)
        comps = {"approx": 1.0, "usability": 2.0, "probe_gen": 3.0}
        for s, v in enumerate(vals):
            seeds.append({"model": f"{m}.s{s}", "base_model": m, "pretrain_seed": s, "dataset": "digits",
                          "objective": objective, **comps, "enc_gen": v - 6.0, "agg_risk": v})
        board.append({"model": m, "dataset": "digits", "objective": objective, **comps,
                      "enc_gen": vals.mean() - 6.0, "agg_risk": vals.mean(), "agg_risk_lo": vals.min(),
                      "agg_risk_hi": vals.max()})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(board).to_csv(root / "leaderboard.csv", index=False)
    pd.DataFrame(seeds).to_csv(root / "leaderboard_seeds.csv", index=False)
    return root / "leaderboard.csv"


def test_two_init_models_each_get_their_baseline_contrasts(tmp_path, capsys):
    board = _seeded_tables(tmp_path / "res", {"init_cnn": ("init", 80.0), "init_vit": ("init", 85.0),
                                              "simclr": ("simclr", 40.0), "byol": ("byol", 50.0)})
    assert run_cli("analyze", "--leaderboard", str(board), "--out", str(tmp_path / "res" / "analysis")) == 0
    con = pd.read_csv(tmp_path / "res" / "analysis" / "baseline_contrasts.csv")
    assert sorted(zip(con["model"], con["baseline"])) == [("byol", "init_cnn"), ("byol", "init_vit"),
                                                          ("simclr", "init_cnn"), ("simclr", "init_vit")]
    seeds = pd.read_csv(tmp_path / "res" / "leaderboard_seeds.csv").set_index(["base_model", "pretrain_seed"])
    for r in con.itertuples():
        diff = (seeds.loc[r.model, "agg_risk"] - seeds.loc[r.baseline, "agg_risk"]).mean()
        assert r.delta_agg_risk == pytest.approx(diff)
    # the README findings name each row's baseline
    readme = tmp_path / "README.md"
    readme.write_text("<!-- findings:start -->\n<!-- findings:end -->\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "write_findings.py"
    subprocess.run([sys.executable, str(script), "--results", str(tmp_path / "res"), "--readme", str(readme)],
                   check=True, capture_output=True)
    text = readme.read_text()
    for r in con.itertuples():
        assert f"`{r.model}` vs `{r.baseline}` {r.delta_agg_risk:+.1f} points" in text


def test_one_init_model_keeps_one_contrast_per_model(tmp_path):
    board = _seeded_tables(tmp_path / "res", {"init": ("init", 80.0), "simclr": ("simclr", 40.0)})
    assert run_cli("analyze", "--leaderboard", str(board), "--out", str(tmp_path / "an")) == 0
    con = pd.read_csv(tmp_path / "an" / "baseline_contrasts.csv")
    assert list(zip(con["model"], con["baseline"])) == [("simclr", "init")]
