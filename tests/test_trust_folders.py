"""Reliability round 3, classes 6 and 7 (issue 24), through the CLI as users meet them.

6. Folders and links: riskdecomp writes to and deletes from real folders under ``--out`` only (a symbolic link
   among ``runs/``, ``per_sample/``, ``active/``, ``ensemble/``, ``analysis/``, ``plots/`` is refused with one line,
   nothing lands in or disappears from its target); the folder state ``runs/_folder.json`` is checked like a run
   record, and a damaged one never makes ``build`` replace a summary with fewer rows.
7. Unbounded inputs: a zoo has at most ``MAX_ENTRIES`` entries (sweep variants and seeds counted before any is
   made); a name or other validated string ending in a newline is refused (``$`` matches before a final newline).
"""

import json
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_trust_runner import cli, one_error_line, zoo  # noqa: F401 (zoo: the 3-model fixture)
from zoo_factory import FAST, synthetic_features

MAX_ENTRIES = 10_000  # README, "The zoo file": a zoo has at most 10,000 entries

LIGHT = [*FAST, "--no-statistics"]


def evaluate_cli(zoo, out, cache, *extra) -> int:
    return cli("evaluate", "--zoo", zoo, "--out", out, "--cache-dir", cache, "--jobs", "1", *LIGHT, *extra)


def snapshot(root: Path) -> dict:
    """Every file under ``root`` (links not followed) with its bytes and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(zoo, tmp_path_factory):
    """A finished run of the 3-model zoo (uncertainty and active learning on: every output folder is used)."""
    root = tmp_path_factory.mktemp("finished")
    assert evaluate_cli(zoo, root / "out", root / "cache") == 0
    return root / "out"


@pytest.fixture
def good_run(finished, tmp_path):
    """A private copy of the finished run (tests damage it)."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def plant_victims(where: Path) -> dict:
    """A folder outside --out holding files a riskdecomp run would write or delete (by their names)."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("baseline_contrasts.csv", "seed_ranking_stability.csv", "summary.json", "_folder.json",
                 "synth.csv", "good@synth.json", "good@synth.csv"):
        (where / name).write_text("precious\n")
    return snapshot(where)


# ------------------------------------------------------------------- #6: no write outside: symlinked subfolders
@pytest.mark.parametrize("sub", ["runs", "per_sample", "active", "ensemble", "analysis", "plots"])
def test_6_evaluate_refuses_a_symlinked_output_subfolder_and_writes_nothing_outside(sub, zoo, tmp_path, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    before = plant_victims(elsewhere)
    out.mkdir()
    (out / sub).symlink_to(elsewhere, target_is_directory=True)
    code = evaluate_cli(zoo, out, tmp_path / "cache", "--report")
    one_error_line(capsys, str(out / sub), "is a symbolic link", "--out")
    assert code == 2
    assert snapshot(elsewhere) == before
    assert [p.name for p in out.iterdir()] == [sub]  # refused before any compute: nothing written


@pytest.mark.parametrize("sub", ["analysis", "plots", "runs"])
def test_6_build_and_report_never_write_or_delete_through_a_symlinked_subfolder(sub, good_run, tmp_path, capsys):
    """The issue's example: a report into a symlinked analysis/ wrote there and its no-seed clean-up deleted
    baseline_contrasts.csv / seed_ranking_stability.csv in the link's target."""
    elsewhere = tmp_path / "elsewhere"
    before = plant_victims(elsewhere)
    kept = tmp_path / "kept"
    if (good_run / sub).exists():
        shutil.move(good_run / sub, kept)
    (good_run / sub).symlink_to(elsewhere, target_is_directory=True)
    board = (good_run / "leaderboard.csv").read_bytes()
    commands = [["build", "--results", good_run, "--report"]]
    if sub != "runs":  # report writes analysis/ and plots/ (it only reads runs/)
        commands.append(["report", "--results", good_run])
    for command in commands:
        code = cli(*command)
        one_error_line(capsys, str(good_run / sub), "is a symbolic link")
        assert code == 2, command
        assert snapshot(elsewhere) == before, command
        assert (good_run / "leaderboard.csv").read_bytes() == board


def test_6_a_symlinked_summary_file_is_replaced_not_written_through(good_run, tmp_path, capsys):
    """A summary file that is a link: the atomic rename replaces the link itself; its target is never written."""
    target = tmp_path / "elsewhere" / "leaderboard.csv"
    target.parent.mkdir()
    target.write_text("precious\n")
    rows = len(pd.read_csv(good_run / "leaderboard.csv"))
    (good_run / "leaderboard.csv").unlink()
    (good_run / "leaderboard.csv").symlink_to(target)
    assert cli("build", "--results", good_run, "--no-report") == 0
    assert target.read_text() == "precious\n"
    assert not (good_run / "leaderboard.csv").is_symlink() and len(pd.read_csv(good_run / "leaderboard.csv")) == rows


# ------------------------------------------------------------------- #6: no lost summary: damaged folder state
def _set(field, value):
    def edit(state):
        state[field] = value
    return edit


def _drop(field):
    def edit(state):
        del state[field]
    return edit


DAMAGE = {
    "settings_key 7": (_set("settings_key", 7), "settings_key"),
    "settings []": (_set("settings", []), "settings"),
    "order 5": (_set("order", 5), "order"),
    "order [1]": (_set("order", [1]), "order"),
    "no settings_key": (_drop("settings_key"), "settings_key"),
    "settings_key of no record": (_set("settings_key", "0" * 24), "settings_key"),
    "settings seed 'x'": (lambda s: s["settings"].update(seed="x"), "settings"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_6_build_never_replaces_a_summary_because_the_folder_state_is_damaged(damage, good_run, capsys):
    edit, field = DAMAGE[damage]
    state_path = good_run / "runs" / "_folder.json"
    state = json.loads(state_path.read_text())
    edit(state)
    state_path.write_text(json.dumps(state))
    before = {p.name: p.read_bytes() for p in good_run.glob("*.csv")}
    assert len(pd.read_csv(good_run / "leaderboard.csv")) == 3
    code = cli("build", "--results", good_run, "--no-report")
    one_error_line(capsys, "_folder.json", field)
    assert code == 2
    assert {p.name: p.read_bytes() for p in good_run.glob("*.csv")} == before  # every summary as it was


@pytest.mark.parametrize("damage", ["settings_key 7", "settings []", "order 5", "not json"])
def test_6_evaluate_rewrites_a_damaged_folder_state_when_every_record_is_of_its_settings(damage, good_run, zoo,
                                                                                        tmp_path, capsys, caplog):
    state_path = good_run / "runs" / "_folder.json"
    good_state = json.loads(state_path.read_text())
    if damage == "not json":
        state_path.write_text("{junk")
    else:
        state = dict(good_state)
        DAMAGE[damage][0](state)
        state_path.write_text(json.dumps(state))
    board = (good_run / "leaderboard.csv").read_bytes()
    records = {p.name: p.read_bytes() for p in (good_run / "runs").glob("*@*.json")}
    assert evaluate_cli(zoo, good_run, tmp_path / "cache") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "damaged folder state" in caplog.text, err
    assert json.loads(state_path.read_text()) == good_state  # rewritten as the run that made the folder wrote it
    assert (good_run / "leaderboard.csv").read_bytes() == board
    assert {p.name: p.read_bytes() for p in (good_run / "runs").glob("*@*.json")} == records  # all reused
    assert cli("build", "--results", good_run, "--no-report") == 0
    assert (good_run / "leaderboard.csv").read_bytes() == board


def test_6_evaluate_refuses_a_damaged_folder_state_beside_records_of_other_settings(good_run, zoo, tmp_path, capsys):
    state_path = good_run / "runs" / "_folder.json"
    state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "order": 5}))
    before = snapshot(good_run)
    assert evaluate_cli(zoo, good_run, tmp_path / "cache", "--seed", "1") == 2
    one_error_line(capsys, "_folder.json", "order", "--force")
    assert snapshot(good_run) == before


def test_6_a_damaged_failures_entry_is_left_out_with_a_warning(good_run, capsys, caplog):
    key = json.loads((good_run / "runs" / "_folder.json").read_text())["settings_key"]
    (good_run / "runs" / "_failures.json").write_text(json.dumps({
        "x|synth": {"settings_key": key},  # fields missing
        "y|synth": [1, 2],
        "good|synth": {"model": "good", "dataset": "synth", "error_type": "FeatureError", "error": "boom",
                       "settings_key": key}}))
    board = (good_run / "leaderboard.csv").read_bytes()
    assert cli("build", "--results", good_run, "--no-report") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "damaged entry" in caplog.text, err
    assert (good_run / "leaderboard.csv").read_bytes() == board
    assert pd.read_csv(good_run / "failures.csv")["model"].tolist() == ["good"]


# ------------------------------------------------------------------- #7: unbounded inputs
def write_zoo(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "zoo.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def zoo_check(path: Path) -> int:
    return cli("zoo", "check", "--zoo", path)


def grid_zoo(tmp_path: Path, keys: int, values: int) -> Path:
    fields = ["lr", "weight_decay", "z_dim", "epochs", "batch_size", "n_views", "temperature"][:keys]
    sweep = "".join(f"      {k}: [{', '.join(str(i + 1) for i in range(values))}]\n" for k in fields)
    return write_zoo(tmp_path, "models:\n  - name: g\n    source: recipe\n    recipe: {objective: simclr}\n"
                               "    sweep_mode: grid\n    sweep:\n" + sweep)


def test_7_a_grid_sweep_of_7_keys_x_10_values_is_one_line_quickly(tmp_path, capsys):
    path = grid_zoo(tmp_path, 7, 10)
    t = time.perf_counter()
    assert zoo_check(path) == 2
    assert time.perf_counter() - t < 30  # counted, not made (making them grew memory until a MemoryError)
    one_error_line(capsys, str(path), "'g'", "sweep", "10,000,001 entries", f"{MAX_ENTRIES:,}")


@pytest.mark.parametrize("case", ["grid 5x7", "one_at_a_time x several entries", "seeds x entries",
                                  "written entries"])
def test_7_every_expansion_is_capped_before_it_is_made(case, tmp_path, capsys):
    if case == "grid 5x7":  # 16,807 variants: just above the cap
        path = grid_zoo(tmp_path, 5, 7)
    elif case == "one_at_a_time x several entries":  # 3 entries x 3,400 variants: each fits, together they do not
        values = ", ".join(str(i) for i in range(1, 3401))
        path = write_zoo(tmp_path, "models:\n" + "".join(
            f"  - {{name: m{j}, source: recipe, recipe: {{objective: simclr}}, sweep: {{z_dim: [{values}]}}}}\n"
            for j in range(3)))
    elif case == "seeds x entries":  # 4 recipe entries x 3,000 pretraining seeds
        seeds = ", ".join(str(i) for i in range(3000))
        path = write_zoo(tmp_path, f"defaults:\n  seeds: [{seeds}]\nmodels:\n" + "".join(
            f"  - {{name: m{j}, source: recipe, recipe: {{objective: simclr}}}}\n" for j in range(4)))
    else:
        path = write_zoo(tmp_path, "models:\n" + "".join(
            f"  - {{name: m{j}, source: features, path: f.npz}}\n" for j in range(MAX_ENTRIES + 1)))
    assert zoo_check(path) == 2
    one_error_line(capsys, str(path), "entries", f"more than the {MAX_ENTRIES:,}")


def test_7_a_sweep_below_the_cap_still_expands(tmp_path, capsys):
    path = grid_zoo(tmp_path, 2, 3)
    assert zoo_check(path) == 0
    assert "ok: 10 entries" in capsys.readouterr().out


NEWLINE_CASES = {  # (entry, the field the error names)
    "zoo name": ('{name: "a\\n", source: features, path: f.npz}', "'name'"),
    "features dataset": ('{name: a, source: features, path: f.npz, dataset: "x\\n"}', "'dataset'"),
    "reference": ('{name: a, source: features, path: f.npz, reference: "b\\n"}', "'reference'"),
    "timm model": ('{name: a, source: timm, model: "resnet18\\n", pretrained: false}', "'model'"),
    "recipe backbone": ('{name: a, source: recipe, recipe: {objective: simclr, backbone: "resnet18\\n"}}', "backbone"),
    "checkpoint architecture": ('{name: a, source: checkpoint, architecture: "resnet18\\n", weights: w.pt}',
                                "'architecture'"),
    "huggingface model": ('{name: a, source: huggingface, model: "org/name\\n"}', "'model'"),
    "huggingface revision": ('{name: a, source: huggingface, model: org/name, revision: "main\\n"}', "'revision'"),
    "torch_hub repo": ('{name: a, source: torch_hub, repo: "org/repo\\n", entrypoint: m, trust_repo: true}', "'repo'"),
}


@pytest.mark.parametrize("case", sorted(NEWLINE_CASES))
def test_7_a_validated_string_ending_in_a_newline_is_refused(case, tmp_path, capsys):
    """Every validated string of a zoo entry: the same value without the newline is accepted, with it the entry is
    refused naming that field."""
    (tmp_path / "f.npz").write_bytes(b"")
    (tmp_path / "w.pt").write_bytes(b"")
    entry, field = NEWLINE_CASES[case]
    other = "\n  - {name: b, source: features, path: f.npz}\n"
    assert zoo_check(write_zoo(tmp_path, "models:\n  - " + entry.replace("\\n", "") + other)) == 0
    capsys.readouterr()
    path = write_zoo(tmp_path, "models:\n  - " + entry + other)
    assert zoo_check(path) == 2
    one_error_line(capsys, str(path), f"field {field}" if field.startswith("'") else field)


def test_7_a_dataset_name_ending_in_a_newline_makes_no_look_alike_files(tmp_path, capsys):
    """The issue's example through evaluate: 'x\\n' passed the name rule and made a second 'x' row and file."""
    x_tr, y_tr, x_te, y_te = synthetic_features(np.random.default_rng(0), 150, 20, 3, 4, 1.5)
    np.savez(tmp_path / "f.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    path = write_zoo(tmp_path, 'models:\n  - {name: a, source: features, path: f.npz, dataset: "x\\n"}\n')
    out = tmp_path / "out"
    assert evaluate_cli(path, out, tmp_path / "cache", "--no-uncertainty", "--no-active") == 2
    one_error_line(capsys, "must match")
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
