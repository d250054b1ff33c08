"""Numbers you can trust (issue 12), the runner's part: unambiguous result files (#3), no write outside --out and the
cache (#8), validated run records and a real --force (#5), a run key that covers the code version (#7), reruns that
never destroy good results nor mix settings (#9), sane --out and file modes (#10), and bad input at the CLI.
Everything runs through the CLI on small precomputed-feature zoos (fast, no images) unless an encoder is the point."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from zoo_factory import FAST, make_features_zoo, synthetic_features

import riskdecomp
from riskdecomp.cli import main

LIGHT = [*FAST, "--no-active", "--no-statistics"]


def cli(*args):
    """Run the CLI in-process: (exit code, stderr lines are read by the caller through capsys)."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def evaluate_cli(zoo, out, cache, *extra):
    return cli("evaluate", "--zoo", zoo, "--out", out, "--cache-dir", cache, "--jobs", "1", *LIGHT, *extra)


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("riskdecomp: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def write_npz(path, seed=0, n_train=150, n_test=20, classes=3):  # k-NN scores need > 100 train points
    x_tr, y_tr, x_te, y_te = synthetic_features(np.random.default_rng(seed), n_train, n_test, classes, 4, 1.5)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return path


def tree(root: Path, skip=("out", "cache")) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_features_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def good_run(zoo, tmp_path):
    """A finished run of the 3-model zoo (sup, good, weak) in tmp_path/out."""
    out = tmp_path / "out"
    assert evaluate_cli(zoo, out, tmp_path / "cache") == 0
    return out


# ------------------------------------------------------------------------------------- #3: names never collide
def test_3_model_and_dataset_names_that_share_a_double_underscore_get_their_own_files(tmp_path, capsys):
    write_npz(tmp_path / "one.npz", seed=1, n_test=21)
    write_npz(tmp_path / "two.npz", seed=2, n_test=24)
    (tmp_path / "zoo.yaml").write_text("models:\n"
                                       "  - {name: a, source: features, path: one.npz, dataset: b__c}\n"
                                       "  - {name: a__b, source: features, path: two.npz, dataset: c}\n")
    out = tmp_path / "out"
    assert cli("evaluate", "--zoo", tmp_path / "zoo.yaml", "--out", out, "--cache-dir", tmp_path / "c",
               "--jobs", "1", *FAST, "--no-statistics") == 0
    assert len(list((out / "runs").glob("*@*.json"))) == 2
    for model, dataset, n_test in (("a", "b__c", 21), ("a__b", "c", 24)):
        rec = json.loads((out / "runs" / f"{model}@{dataset}.json").read_text())
        assert (rec["model"], rec["dataset"], rec["row"]["n_test"]) == (model, dataset, n_test)
        assert len(pd.read_csv(out / "per_sample" / f"{model}@{dataset}.csv")) == n_test
        assert set(pd.read_csv(out / "active" / f"{model}@{dataset}.csv")["model"]) == {model}
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(zip(board["model"], board["dataset"])) == [("a", "b__c"), ("a__b", "c")]


@pytest.mark.parametrize("stem", ["ab", "a@b", "A@b", "a@", "@b", "a@b@c", ".x@b"])
def test_3_only_valid_stems_parse_back(stem):
    from riskdecomp.utils.names import parse_stem, result_stem

    parsed = parse_stem(stem)
    if parsed is not None:
        assert result_stem(*parsed) == stem
    assert (parsed is not None) == (stem == "a@b")


# ------------------------------------------------------------------------------------- #8: the victim file
VICTIM_CASES = {
    # zoo field or CLI option -> (zoo entry text with {victim} = a traversal to the victim, extra CLI args)
    "features dataset": ("{{name: m, source: features, path: f.npz, dataset: 'x/../{victim}'}}", []),
    "features dataset dotdot": ("{{name: m, source: features, path: f.npz, dataset: '..'}}", []),
    "features path stem": ("{{name: m, source: features, path: '..npz'}}", []),
    "name": ("{{name: '../../{victim}', source: features, path: f.npz}}", []),
    "reference": ("{{name: m, source: features, path: f.npz, reference: '../../{victim}'}}", []),
    "representation": ("{{name: m, source: features, path: f.npz, representation: '../../{victim}'}}", []),
    "metadata": ("{{name: m, source: features, path: f.npz, metadata: {{notes: '../../{victim}'}}}}", []),
    "timm model": ("{{name: m, source: timm, model: '../../{victim}'}}", []),
    "checkpoint architecture": ("{{name: m, source: checkpoint, architecture: '../../{victim}', weights: w.pt}}", []),
    "recipe backbone": ("{{name: m, source: recipe, recipe: {{objective: simclr, backbone: '../../{victim}'}}}}", []),
    "--models": ("{{name: m, source: features, path: f.npz}}", ["--models", "../../{victim}"]),
    "--dataset": ("{{name: m, source: timm, model: resnet18}}", ["--dataset", "imagefolder:../../{victim}"]),
    "--device": ("{{name: m, source: features, path: f.npz}}", ["--device", "../../{victim}"]),
}


@pytest.mark.parametrize("case", sorted(VICTIM_CASES))
def test_8_no_zoo_field_or_option_writes_outside_out_and_cache(case, tmp_path, capsys):
    """Each field that could reach a path gets a traversal to a planted victim file: the run may succeed or fail
    with one line, but the victim and every file outside --out and the cache stay untouched."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    victim = tmp_path / "victim" / "important"
    victim.parent.mkdir()
    victim.with_suffix(".csv").write_text("precious\n")
    victim.with_suffix(".json").write_text("{}\n")
    write_npz(work / "f.npz")
    shutil.copy(work / "f.npz", work / "..npz")
    entry, extra = VICTIM_CASES[case]
    rel = os.path.relpath(victim, work / "out" / "per_sample")
    (work / "zoo.yaml").write_text("models:\n  - " + entry.format(victim=rel) + "\n")
    before = tree(tmp_path, skip=("work",)) | {"work/" + k: v for k, v in tree(work).items()}
    code = cli("evaluate", "--zoo", work / "zoo.yaml", "--out", work / "out", "--cache-dir", work / "cache",
               "--jobs", "1", *LIGHT, *[a.format(victim=rel) for a in extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err and code in (0, 1, 2), err
    assert victim.with_suffix(".csv").read_text() == "precious\n"
    after = tree(tmp_path, skip=("work",)) | {"work/" + k: v for k, v in tree(work).items()}
    assert after == before
    if case in ("features dataset", "features dataset dotdot", "features path stem", "name"):
        assert code == 2 and "must match" in err  # refused up front by the one name rule


# ------------------------------------------------------------------------------------- #5: records are checked
def _edit_agg(rec):
    rec["row"]["agg_risk"] = -42.0


def _other_model(rec, out):
    other = json.loads((out / "runs" / "weak@synth.json").read_text())
    rec.clear()
    rec.update(other)


def _no_row(rec):
    del rec["row"]


RECORD_EDITS = {"agg_risk -42": _edit_agg, "another model's record": _other_model, "no row": _no_row,
                "not json": None}


@pytest.mark.parametrize("edit", sorted(RECORD_EDITS))
def test_5_an_edited_record_is_recomputed_with_a_warning(edit, good_run, zoo, tmp_path, capsys, caplog):
    out = good_run
    board = (out / "leaderboard.csv").read_bytes()
    path = out / "runs" / "good@synth.json"
    capsys.readouterr()
    if RECORD_EDITS[edit] is None:
        path.write_bytes(b"\x00\xff not json")
    else:
        rec = json.loads(path.read_text())
        fn = RECORD_EDITS[edit]
        fn(rec, out) if fn is _other_model else fn(rec)
        path.write_text(json.dumps(rec))
    # summaries alone (riskdecomp build) leave the invalid record out, with a warning naming it
    caplog.clear()
    assert cli("build", "--results", out, "--no-report") == 0
    assert "good@synth.json: invalid run record" in caplog.text and "Traceback" not in capsys.readouterr().err
    assert list(pd.read_csv(out / "leaderboard.csv")["model"]) == ["sup", "weak"]
    # evaluate recomputes it: the same numbers as before
    caplog.clear()
    assert evaluate_cli(zoo, out, tmp_path / "cache") == 0
    assert "good@synth.json: invalid run record" in caplog.text and "recomputing" in caplog.text
    assert (out / "leaderboard.csv").read_bytes() == board
    timings = pd.read_csv(out / "timings.csv").set_index("model")["reused"]
    assert timings.to_dict() == {"sup": True, "good": False, "weak": True}


def test_5_force_recomputes_every_record(good_run, zoo, tmp_path):
    out = good_run
    board = (out / "leaderboard.csv").read_bytes()
    assert evaluate_cli(zoo, out, tmp_path / "cache", "--force") == 0
    assert not pd.read_csv(out / "timings.csv")["reused"].any()
    assert (out / "leaderboard.csv").read_bytes() == board


# ------------------------------------------------------------------------------------- #7: run key and versions
@pytest.mark.parametrize("what", ["__version__", "PROTOCOL_VERSION"])
def test_7_records_of_another_version_are_recomputed(what, good_run, zoo, tmp_path, monkeypatch):
    out = good_run
    import riskdecomp.runner.records as runner

    if what == "__version__":
        monkeypatch.setattr(runner, "__version__", riskdecomp.__version__ + ".post1")
    else:
        monkeypatch.setattr(runner, "PROTOCOL_VERSION", runner.PROTOCOL_VERSION + 1)
    # the folder holds results of the older version: refused without --force (never mixed), recomputed with it
    assert evaluate_cli(zoo, out, tmp_path / "cache") == 2
    assert evaluate_cli(zoo, out, tmp_path / "cache", "--force") == 0
    assert not pd.read_csv(out / "timings.csv")["reused"].any()


def test_7_run_key_covers_the_entry_identity(tmp_path, monkeypatch):
    """The run key includes encoders.entry_identity (the weights actually used): when it changes, the run is
    recomputed; execution knobs (jobs, batch size, threads, progress) and zoo-level settings do not recompute."""
    from safetensors.torch import save_file

    from riskdecomp.pretrain.backbones import create_backbone

    save_file(create_backbone("smallcnn", width=2, z_dim=4).state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "zoo.yaml").write_text("models:\n  - {name: c, source: checkpoint, architecture: smallcnn, "
                                       "weights: w.safetensors, model_kwargs: {width: 2, z_dim: 4}}\n")
    args = ["evaluate", "--zoo", tmp_path / "zoo.yaml", "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache",
            *LIGHT, "--no-uncertainty", "--aug-views", "0"]
    reused = lambda: bool(pd.read_csv(tmp_path / "out" / "timings.csv")["reused"].all())  # noqa: E731
    assert cli(*args, "--jobs", "1") == 0 and not reused()
    assert cli(*args, "--jobs", "1", "--batch-size", "7", "--threads", "1", "--num-workers", "0") == 0 and reused()
    import riskdecomp.features.encoders as enc

    real = enc.entry_identity
    monkeypatch.setattr(enc, "entry_identity", lambda e, ds=None, **kw: real(e, ds, **kw) + "|other-weights")
    assert cli(*args, "--jobs", "1") == 0 and not reused()


def test_8_zoo_level_settings_rebuild_summaries_without_recomputing_runs(good_run, zoo, tmp_path, capsys):
    out = good_run
    unc = pd.read_csv(out / "uncertainty.csv")
    from riskdecomp.runner.pipeline import evaluate
    from riskdecomp.runner.records import Settings

    res = evaluate(zoo, "digits", out, cache_dir=tmp_path / "cache",
                   settings=Settings(n_boot=50, fewshot_seeds=2, shots=(1, 5), fractions=(0.1,), active=False,
                                     statistics=False, progress=False, uncertainty_boot=20))
    assert all(r["skipped"] for r in res.records)
    new = pd.read_csv(out / "uncertainty.csv")
    assert len(new) == len(unc) and not new["ci_lo"].equals(unc["ci_lo"])  # recomputed with 20 resamples


# ------------------------------------------------------------------------------------- #9: reruns keep results
def test_9_a_rerun_where_every_model_fails_keeps_the_leaderboard(good_run, zoo, tmp_path, capsys):
    out = good_run
    board = (out / "leaderboard.csv").read_bytes()
    work = tmp_path / "broken"
    shutil.copytree(zoo.parent, work)
    for p in work.glob("*.npz"):
        p.write_bytes(b"junk")
    assert evaluate_cli(work / "zoo.yaml", out, tmp_path / "cache") == 1
    assert (out / "leaderboard.csv").read_bytes() == board
    assert sorted(pd.read_csv(out / "failures.csv")["model"]) == ["good", "sup", "weak"]
    assert evaluate_cli(zoo, out, tmp_path / "cache") == 0  # fixed again: no failures left
    assert not (out / "failures.csv").exists() and (out / "leaderboard.csv").read_bytes() == board


def test_9_a_rerun_on_a_full_disk_keeps_every_file(good_run, zoo, tmp_path, capsys, monkeypatch):
    out = good_run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code = evaluate_cli(zoo, out, tmp_path / "cache", "--force")
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err
    assert "the disk is full" in err and str(out) in err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_9_other_settings_are_refused_then_replace_with_force_without_stale_files(good_run, zoo, tmp_path, capsys):
    out = good_run
    board = (out / "leaderboard.csv").read_bytes()
    assert (out / "uncertainty.csv").exists() and (out / "fewshot.csv").exists()
    capsys.readouterr()
    assert evaluate_cli(zoo, out, tmp_path / "cache", "--no-uncertainty", "--seed", "1") == 2
    one_error_line(capsys, str(out), "other settings", "seed 0 -> 1", "uncertainty True -> False", "--force")
    assert (out / "leaderboard.csv").read_bytes() == board
    assert evaluate_cli(zoo, out, tmp_path / "cache", "--no-uncertainty", "--seed", "1", "--models", "good",
                        "--force") == 0
    # only the records of the new settings are summarized (good and its reference), nothing of seed 0 beside them
    assert list(pd.read_csv(out / "leaderboard.csv")["model"]) == ["sup", "good"]
    assert not (out / "uncertainty.csv").exists()
    assert set(pd.read_csv(out / "fewshot.csv")["model"]) == {"sup", "good"}
    assert evaluate_cli(zoo, out, tmp_path / "cache", "--no-uncertainty", "--seed", "1") == 0
    assert list(pd.read_csv(out / "leaderboard.csv")["model"]) == ["sup", "good", "weak"]


def test_9_a_models_subset_run_adds_rows_and_build_rebuilds_everything(zoo, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert evaluate_cli(zoo, out, cache, "--models", "good") == 0
    assert list(pd.read_csv(out / "leaderboard.csv")["model"]) == ["sup", "good"]
    assert evaluate_cli(zoo, out, cache, "--models", "weak") == 0
    assert list(pd.read_csv(out / "leaderboard.csv")["model"]) == ["sup", "good", "weak"]
    board = (out / "leaderboard.csv").read_bytes()
    assert evaluate_cli(zoo, out, cache, "--models", "good") == 0  # 3 rows stay 3 rows
    assert (out / "leaderboard.csv").read_bytes() == board
    summaries = {n: (out / n).read_bytes() for n in ("leaderboard.csv", "fewshot.csv", "uncertainty.csv")}
    for n in summaries:
        (out / n).unlink()
    capsys.readouterr()
    assert cli("build", "--results", out, "--no-report") == 0
    assert "leaderboard.csv (3 rows)" in capsys.readouterr().out
    assert {n: (out / n).read_bytes() for n in summaries} == summaries


def test_9_the_api_returns_every_table_and_its_path(zoo, tmp_path):
    from riskdecomp.runner.records import Settings

    res = riskdecomp.evaluate(zoo, "digits", tmp_path / "out", cache_dir=tmp_path / "cache",
                              settings=Settings(n_boot=20, fewshot_seeds=1, shots=(1,), fractions=(), progress=False,
                                                statistics=False, uncertainty_boot=20, active_budget_per_class=5))
    for name in ("leaderboard", "fewshot", "uncertainty", "active_learning", "label_efficiency", "timings"):
        table = getattr(res, name)
        assert len(table) > 0, name
        pd.testing.assert_frame_equal(pd.read_csv(res.paths[name]), pd.read_csv(tmp_path / "out" / f"{name}.csv"))
    assert res.ok and "failures" not in res.paths
    assert "build" in dir(riskdecomp)


# ------------------------------------------------------------------------------------- #10: --out and file modes
@pytest.mark.parametrize("where", ["/", "~", "~/.."])
def test_10_a_filesystem_root_or_home_folder_is_refused_as_out(where, zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "me"))
    (tmp_path / "home" / "me").mkdir(parents=True)
    out = os.path.expanduser(where)
    assert evaluate_cli(zoo, out, tmp_path / "cache") == 2
    one_error_line(capsys, "--out", "filesystem root or a home folder")
    assert list((tmp_path / "home").rglob("*")) == [tmp_path / "home" / "me"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_10_outputs_respect_the_umask(umask, mode, zoo, tmp_path):
    old = os.umask(umask)
    try:
        assert evaluate_cli(zoo, tmp_path / "out", tmp_path / "cache", "--models", "sup") == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] + list((tmp_path / "cache").rglob("*.*"))
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files if p.is_file()} == {mode}


# ------------------------------------------------------------------------------------- bad input at the CLI
def _readonly_ok():
    return os.geteuid() != 0  # root writes through permission bits


@pytest.mark.parametrize("case", ["out_under_a_file", "out_is_a_file", "out_read_only", "cache_read_only",
                                  "featurize_cache_read_only", "featurize_cache_under_a_file"])
def test_bad_output_locations_fail_first_with_one_line(case, zoo, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    if "read_only" in case:
        if not _readonly_ok():
            pytest.skip("running as root: a read-only folder is still writable")
        ro.chmod(0o555)
    out, cache = tmp_path / "out", tmp_path / "cache"
    bad = {"out_under_a_file": blocker / "out", "out_is_a_file": blocker, "out_read_only": ro / "out",
           "cache_read_only": ro / "cache", "featurize_cache_read_only": ro / "cache",
           "featurize_cache_under_a_file": blocker / "cache"}[case]
    t = time.perf_counter()
    if case.startswith("featurize"):
        code = cli("featurize", "--zoo", zoo, "--cache-dir", bad, "--no-progress")
    elif case.startswith("out"):
        code = evaluate_cli(zoo, bad, cache)
    else:
        code = evaluate_cli(zoo, out, bad)
    assert code == 2 and time.perf_counter() - t < 10  # found before any compute
    one_error_line(capsys, str(bad))
    assert not (out / "runs").exists()


def test_featurize_into_a_full_cache_says_the_disk_is_full(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    from riskdecomp.pretrain.backbones import create_backbone

    save_file(create_backbone("smallcnn", width=2, z_dim=4).state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "zoo.yaml").write_text("models:\n  - {name: c, source: checkpoint, architecture: smallcnn, "
                                       "weights: w.safetensors, model_kwargs: {width: 2, z_dim: 4}}\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert cli("featurize", "--zoo", tmp_path / "zoo.yaml", "--cache-dir", tmp_path / "cache", "--no-progress") == 2
    line = one_error_line(capsys, "the disk is full", str(tmp_path / "cache"))
    assert ".npy" in line
    assert not [p for p in (tmp_path / "cache").rglob("*.npy")]  # no partial file left behind


CLI_CASES = {
    # case -> (extra args, words of the one-line error)
    "seed -1": (["--seed", "-1"], ["--seed", "-1"]),
    "seed -1 image dataset": (["--seed", "-1", "--dataset", "digits"], ["--seed"]),
    "shots -1": (["--shots", "-1"], ["--shots", "'-1'"]),
    "shots 1,x": (["--shots", "1,x"], ["--shots", "'x'"]),
    "fractions 0": (["--fractions", "0"], ["--fractions", "'0'", "(0, 1)"]),
    "fractions 1": (["--fractions", "1"], ["--fractions", "'1'", "(0, 1)"]),
    "fractions 0,-0.1": (["--fractions", "0.1,-0.1"], ["--fractions", "'-0.1'"]),
    "fractions 1.5": (["--fractions", "1.5"], ["--fractions", "'1.5'"]),
    "models ,": (["--models", ","], ["--models", "no model names"]),
    "models ghost": (["--models", "ghost"], ["unknown model 'ghost'"]),
    "jobs 0": (["--jobs", "0"], ["--jobs", "'0'"]),
    "jobs x": (["--jobs", "x"], ["--jobs", "'x'"]),
    "dask malformed": (["--dask-scheduler", "not a scheduler address"], ["--dask-scheduler"]),
    "dask unreachable": (["--dask-scheduler", "tcp://127.0.0.1:9"], ["--dask-scheduler", "tcp://127.0.0.1:9"]),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_options_are_one_line_errors_before_any_compute(case, zoo, tmp_path, capsys):
    if case.startswith("dask"):
        pytest.importorskip("distributed", reason="the dask extra is not installed")
    extra, needles = CLI_CASES[case]
    t = time.perf_counter()
    code = cli("evaluate", "--zoo", zoo, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache", *LIGHT, *extra)
    took = time.perf_counter() - t
    assert code == 2
    one_error_line(capsys, *needles)
    assert took < 20, took  # the dask cases: a few seconds' timeout, not a 30 s hang
    assert not list((tmp_path / "out").glob("runs/*@*.json"))


def test_references_are_added_transitively_and_cycles_are_zoo_errors(tmp_path, capsys):
    for n in ("a", "b", "c", "d"):
        write_npz(tmp_path / f"{n}.npz")
    entries = "".join(f"  - {{name: {n}, source: features, path: {n}.npz, dataset: s{ref}}}\n"
                      for n, ref in (("c", ""), ("b", ", reference: c"), ("a", ", reference: b"), ("d", "")))
    (tmp_path / "zoo.yaml").write_text("models:\n" + entries)
    assert evaluate_cli(tmp_path / "zoo.yaml", tmp_path / "out", tmp_path / "cache", "--models", "a") == 0
    assert list(pd.read_csv(tmp_path / "out" / "leaderboard.csv")["model"]) == ["c", "b", "a"]
    (tmp_path / "zoo.yaml").write_text("models:\n" + entries.replace("dataset: s}", "dataset: s, reference: a}", 1))
    assert evaluate_cli(tmp_path / "zoo.yaml", tmp_path / "out2", tmp_path / "cache", "--models", "d") == 2
    one_error_line(capsys, "zoo.yaml", "cycle", "c -> a -> b -> c")


def test_jobs_beyond_the_models_are_capped_with_one_line(tmp_path, caplog):
    write_npz(tmp_path / "a.npz")
    (tmp_path / "zoo.yaml").write_text("models:\n  - {name: a, source: features, path: a.npz}\n")
    t = time.perf_counter()
    assert cli("evaluate", "--zoo", tmp_path / "zoo.yaml", "--out", tmp_path / "out", "--cache-dir",
               tmp_path / "cache", *LIGHT, "--jobs", "1000") == 0
    assert "--jobs 1000: capped at 1" in caplog.text and time.perf_counter() - t < 60


def test_debug_works_after_the_subcommand_and_jobs_is_typed_in_help(tmp_path, capsys):
    from riskdecomp.utils.errors import ZooError

    with pytest.raises(ZooError):
        cli("evaluate", "--zoo", tmp_path / "missing.yaml", "--out", tmp_path / "out", "--debug")
    assert cli("evaluate", "--help") == 0
    assert "--jobs INTEGER|auto" in capsys.readouterr().out


JUNK = {
    "missing": None, "empty": b"", "binary": bytes(range(256)) * 8, "junk text": b"hello\nworld\n",
    "header only": b"model,dataset,agg_risk\n", "other columns": b"a,b\n1,2\n",
}


@pytest.mark.parametrize("kind", sorted(JUNK))
@pytest.mark.parametrize("command", ["analyze", "report"])
def test_analyze_and_report_refuse_junk_input(command, kind, tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    if JUNK[kind] is not None:
        (res / "leaderboard.csv").write_bytes(JUNK[kind])
    if command == "analyze":
        if JUNK[kind] is None:
            pytest.skip("click checks that --leaderboard exists")
        code = cli("analyze", "--leaderboard", res / "leaderboard.csv", "--out", tmp_path / "an")
    else:
        code = cli("report", "--results", res)
    assert code == 2
    one_error_line(capsys, "leaderboard.csv")
    assert not (tmp_path / "an").exists() and not (res / "report.html").exists()


def test_build_on_a_folder_without_runs_is_one_line(tmp_path, capsys):
    assert cli("build", "--results", tmp_path) == 2
    one_error_line(capsys, "no runs/ folder")


def test_cli_subprocess_bad_seed_is_one_line_without_usage(tmp_path):
    """The installed command: a bad option value is one `riskdecomp: error:` line and exit 2."""
    p = subprocess.run([sys.executable, "-m", "riskdecomp.cli", "evaluate", "--zoo", "z.yaml", "--seed", "-1"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("riskdecomp: error: ")


def _featurize_takes_force() -> bool:
    import inspect

    from riskdecomp.features.cache import featurize

    return "force" in inspect.signature(featurize).parameters


@pytest.mark.skipif(not _featurize_takes_force(), reason="needs features.featurize(force=...) (zoo helper's change)")
def test_5_force_recomputes_features_and_recipe_checkpoints(tmp_path):
    """--force recomputes the features of every entry and pretrains a recipe again, not only the records."""
    tiny = "backbone: smallcnn, width: 4, z_dim: 4, epochs: 1, batch_size: 256, image_size: 16"
    (tmp_path / "zoo.yaml").write_text(f"models:\n  - {{name: r, source: recipe, recipe: {{objective: simclr, {tiny}}}}}\n")
    args = ["evaluate", "--zoo", tmp_path / "zoo.yaml", "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache",
            "--jobs", "1", *LIGHT, "--no-uncertainty", "--aug-views", "0"]
    assert cli(*args) == 0
    cache = tmp_path / "cache"
    stamp = lambda: {p: p.stat().st_mtime_ns for p in cache.rglob("*")  # noqa: E731
                     if p.suffix in (".npy", ".safetensors")}
    first = stamp()
    assert any(p.suffix == ".npy" for p in first) and any(p.suffix == ".safetensors" for p in first)
    assert cli(*args) == 0 and stamp() == first  # a plain rerun reuses all
    time.sleep(0.01)
    assert cli(*args, "--force") == 0
    again = stamp()
    assert set(again) == set(first) and all(again[p] > first[p] for p in first)
    assert not pd.read_csv(tmp_path / "out" / "timings.csv")["reused"].any()


def test_8_editing_metadata_relabels_rows_without_recomputing(good_run, zoo, tmp_path):
    """Metadata only labels a row: it is not in the run key; a rerun reuses the records and shows the new labels."""
    out = good_run
    work = tmp_path / "z2"
    shutil.copytree(zoo.parent, work)
    text = (work / "zoo.yaml").read_text()
    (work / "zoo.yaml").write_text(text.replace("objective: simclr", "objective: simclr_v2"))
    assert evaluate_cli(work / "zoo.yaml", out, tmp_path / "cache") == 0
    assert pd.read_csv(out / "timings.csv")["reused"].all()
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    assert board.loc["good", "objective"] == "simclr_v2" and board.loc["weak", "objective"] == "vicreg"


def test_focused_uncertainty_command_writes_only_its_analysis(zoo, tmp_path):
    assert cli("uncertainty", "--zoo", zoo, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache",
               "--jobs", "1", "--n-boot", "20", "--no-progress") == 0
    assert (tmp_path / "out" / "uncertainty.csv").exists() and not (tmp_path / "out" / "active_learning.csv").exists()
    assert len(pd.read_csv(tmp_path / "out" / "leaderboard.csv")) == 3


def test_2_an_imagefolder_whose_name_breaks_the_rule_is_refused_before_compute(tmp_path, capsys):
    from test_datasets import make_folder

    make_folder(tmp_path / "My Photos", n_train=2, n_test=1, size=8)
    (tmp_path / "zoo.yaml").write_text("models:\n  - {name: t, source: timm, model: test_resnet, pretrained: false}\n")
    code = cli("evaluate", "--zoo", tmp_path / "zoo.yaml", "--out", tmp_path / "out", "--cache-dir",
               tmp_path / "cache", "--dataset", f"imagefolder:{tmp_path / 'My Photos'}", *LIGHT)
    assert code == 2
    one_error_line(capsys, "'My Photos'", "must match", "rename it or link it")
    assert not list((tmp_path / "cache").rglob("*.npy"))
