"""What a user sees while ``evaluate`` runs and when it ends (issue 13, part 2): a line per finished model in a log
(stderr not a terminal), where each output is, a 7-line summary (the best encoder excluding references, its top group, the references), and silence with ``--no-progress``. Through the
installed command in a subprocess, default flags, a tiny precomputed-feature zoo."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from zoo_factory import make_features_zoo

from riskdecomp.analysis.inference import reference_models
from riskdecomp.utils.progress import Progress

MODELS = ("sup", "good", "weak")


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "riskdecomp.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_evaluate_shows_a_line_per_model_then_the_outputs_and_a_summary(tmp_path):
    zoo = make_features_zoo(tmp_path / "zoo", n_train=120, n_test=40)
    out = tmp_path / "results"
    p = run_cli("evaluate", "--zoo", zoo, "--out", out, "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    done = re.findall(r"^\[(\d)/3\] (\w+) done in [\d.]+ s \(agg_risk ([\d.]+)\)", p.stderr, flags=re.M)
    assert sorted(m for _, m, _ in done) == sorted(MODELS)  # one line per model, in completion order
    assert sorted(i for i, _, _ in done) == ["1", "2", "3"]
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    for _, m, risk in done:
        assert abs(float(risk) - board.loc[m, "agg_risk"]) <= 0.05  # the printed value is the leaderboard's, 1 dp
    # where every output is: each listed path exists
    listed = dict(re.findall(r"^  (\w+) +(\S+)", p.stdout.split("outputs:\n")[1].split("summary:")[0], flags=re.M))
    assert {"leaderboard", "fewshot", "uncertainty", "active_learning", "report"} <= set(listed)
    assert all(Path(v).is_file() for v in listed.values())
    summary = p.stdout.split("summary:\n")[1].splitlines()
    assert len(summary) == 8
    # the best encoder excludes references (the report's analysis/summary.json "best": the inference engine)
    best_of = json.loads((out / "analysis" / "summary.json").read_text())["best"]["synth"]
    refs = reference_models(board.reset_index())
    best = board.drop(index=refs)["agg_risk"].idxmin()
    assert best_of["model"] == best and best_of["references"] == refs
    assert summary[0].split()[:3] == ["best", "encoder", best]
    assert f"agg_risk {board.loc[best, 'agg_risk']:.2f} [{board.loc[best, 'agg_risk_lo']:.2f}, " in summary[0]
    assert summary[0].endswith(", 1 seed(s)")
    assert summary[1].startswith(f"  top group         {len(best_of['top_group'])} of {best_of['n_candidates']} ")
    assert summary[2].split()[0] == "references"
    comps = board.drop(index=refs)[["approx", "usability", "probe_gen", "enc_gen"]].mean()
    assert summary[3].split()[:3] == ["largest", "component", comps.idxmax()]
    # the leaderboard's flags (issue 21), one line just before the failures
    codes = {c for f in board["flags"].fillna("") for c in f.split(";") if c}
    assert summary[4].split()[0] == "flags" and all(c in summary[4] for c in codes)
    assert (summary[4].split() == ["flags", "none"]) == (not codes)
    assert summary[5].split() == ["failures", "0"]
    assert summary[6].split() == ["runs", "3", "computed,", "0", "reused"]

    # a rerun with --no-progress: no progress lines at all, and the summary says every run was reused
    p = run_cli("evaluate", "--zoo", zoo, "--out", out, "--cache-dir", tmp_path / "cache", "--no-progress",
                "--no-report", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "runs              0 computed, 3 reused" in p.stdout
    # without a report the same engine names the same best encoder (nothing written)
    assert summary[0] in p.stdout.splitlines() and summary[1] in p.stdout.splitlines()


def test_a_failed_model_gets_its_line_and_counts_in_the_summary(tmp_path):
    zoo = make_features_zoo(tmp_path / "zoo", n_train=60, n_test=20, extra_models=["""
        - name: broken
          source: features
          path: broken.npz
          reference: sup
    """])
    (tmp_path / "zoo" / "broken.npz").write_bytes(b"not an npz file")
    p = run_cli("evaluate", "--zoo", zoo, "--out", tmp_path / "results", "--cache-dir", tmp_path / "cache",
                "--n-boot", "20", "--fewshot-seeds", "1", "--shots", "1", "--fractions", "0.5", "--no-uncertainty",
                "--no-active", "--no-statistics", "--no-report", "--jobs", "1", cwd=tmp_path)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert re.search(r"^\[\d/4\] broken FAILED: .*broken\.npz", p.stderr, flags=re.M), p.stderr
    assert len(re.findall(r"^\[\d/4\] \w+ done in", p.stderr, flags=re.M)) == 3
    assert "  failures          1" in p.stdout
    assert "runs              3 computed, 0 reused" in p.stdout


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_one_line_is_redrawn_and_finished_models_stay():
    stream = FakeTTY()
    with Progress(["a", "b"], stream=stream) as bar:
        from riskdecomp.utils.progress import stage

        stage("b", "decomposition")
        bar.finished({"model": "b", "row": {"agg_risk": 12.34}, "timings": {"time_total": 1.0}})
    text = stream.getvalue()
    assert "\r" in text and "[2/2] b: decomposition" in text  # the live line, redrawn in place
    assert "[1/2] b done in 1.0 s (agg_risk 12.3), ETA" in text
    stream = FakeTTY()
    with Progress(["a"], enabled=False, stream=stream) as bar:
        stage("a", "featurize")
        bar.finished({"model": "a", "error": "boom"})
    assert stream.getvalue() == ""


def _pretrain_error(tmp_path, text: bytes, capsys):
    from riskdecomp.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text)
    out = tmp_path / "ckpt.safetensors"
    try:
        main(["pretrain", "--recipe", str(recipe), "--out", str(out)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"riskdecomp: error: {recipe}: ")
    return err


def test_pretrain_recipe_is_read_like_a_zoo_file(tmp_path, capsys):
    """``pretrain --recipe`` parses with ``zoo.read_yaml``: an alias bomb, a UTF-16 file, a tag and a bad field are
    one-line errors naming the file (before any training)."""
    bomb = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n".encode() for p, c in zip("abcdefg", "bcdefgh"))
    assert "alias" in _pretrain_error(tmp_path, bomb, capsys).lower()
    assert "UTF-16" in _pretrain_error(tmp_path, "objective: simclr\n".encode("utf-16"), capsys)
    _pretrain_error(tmp_path, b"objective: !!python/object/apply:os.system [echo hi]\n", capsys)
    err = _pretrain_error(tmp_path, b"recipe: {objective: simclr, epochs: -3}\n", capsys)
    assert "'epochs'" in err
