"""Issue 24 class 9 (README contradictions), the rerun part: what the README promises about reruns, --force and
adding analyses is what the CLI does.

- "--force recomputes and makes the new settings the folder's (records of the old ones stay ...)": the results of
  the former settings are moved to ``runs/_replaced/<settings key>/``, a results folder of their own, never deleted.
- "riskdecomp uncertainty / active run evaluate with only that analysis switched on": on an --out that holds
  results they add their analysis to them (reused when the folder has it), keep the others, and take --force.
Everything runs through the CLI on the small precomputed-feature zoo of tests/zoo_factory.py."""

import json

import pandas as pd
import pytest
from test_trust_runner import LIGHT, cli
from zoo_factory import FAST, make_features_zoo


def evaluate_cli(zoo, out, cache, *extra):
    return cli("evaluate", "--zoo", zoo, "--out", out, "--cache-dir", cache, "--jobs", "1", *extra)


def focused(command, zoo, out, cache, *extra):
    return cli(command, "--zoo", zoo, "--out", out, "--cache-dir", cache, "--jobs", "1", "--no-progress", *extra)


def files(root, sub):
    return {p.name: p.read_bytes() for p in sorted((root / sub).glob("*")) if p.is_file()}


def board(out):
    return pd.read_csv(out / "leaderboard.csv").set_index("model")


def reused(out) -> set:
    t = pd.read_csv(out / "timings.csv")
    return set(t.loc[t["reused"], "model"])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_features_zoo(tmp_path_factory.mktemp("zoo"))


# ------------------------------------------------------------------------- --force with other settings loses nothing
@pytest.mark.parametrize("subset", [[], ["--models", "good"]], ids=["whole-zoo", "models-subset"])
def test_force_with_other_settings_keeps_the_old_results(zoo, tmp_path, subset, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, *LIGHT) == 0
    records, per_sample = files(out, "runs"), files(out, "per_sample")
    old_key = json.loads((out / "runs" / "_folder.json").read_text())["settings_key"]
    summaries = {n: (out / n).read_bytes() for n in ("leaderboard.csv", "fewshot.csv", "uncertainty.csv")}
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--seed", "1", *subset) == 2  # refused without --force
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--seed", "1", "--force", *subset) == 0
    new_key = json.loads((out / "runs" / "_folder.json").read_text())["settings_key"]
    assert new_key != old_key
    # the new settings own the folder's summaries ...
    assert all(json.loads(p.read_text())["settings_key"] == new_key for p in (out / "runs").glob("*@*.json"))
    # ... and every result of the old ones is still there, byte for byte, as a results folder of its own
    kept = out / "runs" / "_replaced" / old_key
    assert {n: b for n, b in files(kept, "runs").items() if "@" in n} == {n: b for n, b in records.items() if "@" in n}
    assert files(kept, "per_sample") == per_sample
    assert {n: (kept / n).read_bytes() for n in summaries} == summaries
    for n in summaries:
        (kept / n).unlink()
    capsys.readouterr()
    assert cli("build", "--results", kept, "--no-report") == 0
    assert {n: (kept / n).read_bytes() for n in summaries} == summaries


def test_force_back_to_former_settings_keeps_both(zoo, tmp_path):
    """Beyond the example: switching A -> B -> A with --force keeps B's results too (nothing is ever deleted)."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, *LIGHT) == 0
    key_a = json.loads((out / "runs" / "_folder.json").read_text())["settings_key"]
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--shots", "1,3", "--force") == 0
    board_b = (out / "leaderboard.csv").read_bytes()
    key_b = json.loads((out / "runs" / "_folder.json").read_text())["settings_key"]
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--force") == 0
    assert "fewshot_3shot" not in board(out)
    assert (out / "runs" / "_replaced" / key_b / "leaderboard.csv").read_bytes() == board_b
    assert len(list((out / "runs" / "_replaced" / key_b / "runs").glob("*@*.json"))) == 3
    assert (out / "runs" / "_replaced" / key_a / "leaderboard.csv").exists()


# ------------------------------------------------------------ riskdecomp uncertainty / active add to an existing folder
@pytest.mark.parametrize("command", ["uncertainty", "active"])
def test_focused_command_on_an_evaluate_folder_reuses_it(zoo, tmp_path, command):
    """The issue's example: `evaluate` then `riskdecomp uncertainty` (or `active`) on the same --out: the folder has
    that analysis already, so everything is reused and every other output stays."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, *FAST) == 0
    before = {n: (out / n).read_bytes() for n in ("leaderboard.csv", "uncertainty.csv", "active_learning.csv")}
    assert focused(command, zoo, out, cache) == 0
    assert reused(out) == {"sup", "good", "weak"}
    assert {n: (out / n).read_bytes() for n in before} == before


@pytest.mark.parametrize("command, off, other", [("uncertainty", "--no-uncertainty", "active_learning.csv"),
                                                 ("active", "--no-active", "uncertainty.csv")])
def test_focused_command_adds_its_missing_analysis_and_keeps_the_others(zoo, tmp_path, command, off, other):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, *FAST, off) == 0
    added = {"uncertainty": "uncertainty.csv", "active": "active_learning.csv"}[command]
    assert not (out / added).exists()
    old_board, other_bytes = board(out), (out / other).read_bytes()
    assert focused(command, zoo, out, cache) == 0
    assert (out / added).exists() and (out / other).read_bytes() == other_bytes
    new_board = board(out)
    assert list(new_board.index) == list(old_board.index)
    pd.testing.assert_frame_equal(new_board[old_board.columns], old_board)  # the same numbers, nothing dropped
    assert json.loads((out / "runs" / "_folder.json").read_text())["settings"][command] is True
    assert focused(command, zoo, out, cache) == 0 and reused(out) == {"sup", "good", "weak"}  # now it is there


def test_uncertainty_on_a_models_subset_adds_it_to_every_row(zoo, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--no-uncertainty") == 0
    assert focused("uncertainty", zoo, out, cache, "--models", "weak") == 0
    assert list(board(out).index) == ["sup", "good", "weak"]
    assert set(pd.read_csv(out / "uncertainty.csv")["model"]) == {"sup", "good", "weak"}


def test_active_then_uncertainty_on_the_same_folder_keeps_both(zoo, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert focused("active", zoo, out, cache, "--n-boot", "20") == 0
    assert (out / "active_learning.csv").exists() and not (out / "uncertainty.csv").exists()
    curves = (out / "active_learning.csv").read_bytes()
    assert focused("uncertainty", zoo, out, cache) == 0  # --n-boot 20 comes from the folder
    assert (out / "uncertainty.csv").exists() and (out / "active_learning.csv").read_bytes() == curves
    assert len(board(out)) == 3


@pytest.mark.parametrize("command", ["uncertainty", "active"])
def test_focused_commands_take_force(zoo, tmp_path, command):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert focused(command, zoo, out, cache, "--n-boot", "20") == 0
    lb = (out / "leaderboard.csv").read_bytes()
    assert focused(command, zoo, out, cache, "--n-boot", "20", "--force") == 0
    assert reused(out) == set()  # recomputed
    assert (out / "leaderboard.csv").read_bytes() == lb  # the same numbers
    # other settings (a seed the folder was not made with) are refused, and replace with --force (old ones kept)
    assert focused(command, zoo, out, cache, "--seed", "1") == 2
    assert focused(command, zoo, out, cache, "--seed", "1", "--force") == 0
    assert len(list((out / "runs" / "_replaced").glob("*/leaderboard.csv"))) == 1


def test_a_record_with_an_edited_settings_key_is_set_aside_inside_out(zoo, tmp_path):
    """The settings key names a folder under runs/_replaced/: a record whose key was edited to a path goes to
    ``unknown``, never outside --out."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, *LIGHT) == 0
    rec_path = out / "runs" / "weak@synth.json"
    rec = json.loads(rec_path.read_text())
    rec["settings_key"] = "../../../escape"
    rec_path.write_text(json.dumps(rec))
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--seed", "1", "--force") == 0
    assert not (tmp_path / "escape").exists() and not (out / "escape").exists()
    assert json.loads((out / "runs" / "_replaced" / "unknown" / "runs" / "weak@synth.json").read_text()) == rec
    assert list(board(out).index) == ["sup", "good", "weak"]


@pytest.mark.parametrize("link", [("runs", "_replaced"), ("runs", "_replaced", "KEY")], ids=["_replaced", "its-key"])
def test_force_never_sets_results_aside_through_a_link(zoo, tmp_path, link, capsys):
    """runs/_replaced/ and its key folders are written by --force like runs/ itself: a symbolic link there is refused
    with one line (nothing is written outside --out, and the folder's results stay where they are)."""
    out, cache, elsewhere = tmp_path / "out", tmp_path / "cache", tmp_path / "elsewhere"
    assert evaluate_cli(zoo, out, cache, *LIGHT) == 0
    key = json.loads((out / "runs" / "_folder.json").read_text())["settings_key"]
    records = files(out, "runs")
    link_path = out.joinpath(*(key if p == "KEY" else p for p in link))
    link_path.parent.mkdir(parents=True, exist_ok=True)
    elsewhere.mkdir()
    link_path.symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--seed", "1", "--force") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link" in err[0] and str(link_path) in err[0]
    assert not any(elsewhere.rglob("*"))  # nothing written through the link
    assert files(out, "runs") == records  # and nothing moved or recomputed


def test_force_over_a_damaged_folder_state_sets_the_old_results_aside(zoo, tmp_path):
    """A damaged runs/_folder.json beside records of other settings: --force recomputes, and the old records are
    moved to runs/_replaced/<their own settings key>/ (the summaries, whose settings the damaged state no longer
    says, to runs/_replaced/unknown/): nothing is overwritten."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, *LIGHT) == 0
    key = json.loads((out / "runs" / "_folder.json").read_text())["settings_key"]
    records, leaderboard = files(out, "runs"), (out / "leaderboard.csv").read_bytes()
    (out / "runs" / "_folder.json").write_text('{"order": 5}')
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--seed", "1") == 2  # refused without --force
    assert evaluate_cli(zoo, out, cache, *LIGHT, "--seed", "1", "--force") == 0
    kept = out / "runs" / "_replaced"
    assert {n: b for n, b in files(kept / key, "runs").items() if "@" in n} == \
        {n: b for n, b in records.items() if "@" in n}
    assert (kept / "unknown" / "leaderboard.csv").read_bytes() == leaderboard
    assert json.loads((out / "runs" / "_folder.json").read_text())["settings_key"] != key
