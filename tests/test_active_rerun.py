"""Active-learning curves made under an older protocol (C fixed at 1, before it was chosen as few-shot chooses it)
are stale: a rerun of ``riskdecomp evaluate`` on the folder recomputes them, and only them -- the run records keep
their run keys and numbers, the per-sample files are not rewritten, every run counts as reused -- and ``riskdecomp
build`` on such a folder says so. Through the CLI, on the small precomputed-feature zoo of tests/zoo_factory.py."""

import json

import pandas as pd
from zoo_factory import FAST, make_features_zoo, run_cli

from riskdecomp.estimators import active


def _evaluate(zoo, out, cache):
    return run_cli("evaluate", "--zoo", str(zoo), "--out", str(out), "--cache-dir", str(cache), "--jobs", "1",
                   *FAST, "--no-statistics")


def _snapshot(out):
    return {kind: {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((out / kind).glob("*@*"))}
            for kind in ("runs", "per_sample", "active")}


def test_rerun_recomputes_stale_or_missing_active_curves_and_nothing_else(tmp_path, caplog):
    zoo, out, cache = make_features_zoo(tmp_path / "zoo"), tmp_path / "out", tmp_path / "cache"
    assert _evaluate(zoo, out, cache) == 0
    fresh = _snapshot(out)
    assert len(fresh["active"]) == 3
    summaries = {n: (out / n).read_bytes() for n in ("leaderboard.csv", "fewshot.csv", "uncertainty.csv")}
    records = {n: json.loads(b) for n, (b, _) in fresh["runs"].items()}

    # the folder as an older riskdecomp left it: records without active_protocol, curves without C (marked here
    # by an impossible accuracy), and one model whose curves are missing altogether
    for name, rec in records.items():
        if name.startswith("good@"):
            (out / "active" / name.replace(".json", ".csv")).unlink()
            continue
        old = {k: v for k, v in rec.items() if k != "active_protocol"}  # (main's records have none)
        (out / "runs" / name).write_text(json.dumps(old, indent=1, sort_keys=True))
        path = out / "active" / name.replace(".json", ".csv")
        pd.read_csv(path).drop(columns="C", errors="ignore").assign(accuracy=-1.0).to_csv(path, index=False)
    caplog.clear()
    assert run_cli("build", "--results", str(out), "--no-report") == 0
    err = caplog.text
    assert "older protocol" in err and "sup" in err and "weak" in err, err  # build keeps them, but says so

    stale = _snapshot(out)
    caplog.clear()
    assert _evaluate(zoo, out, cache) == 0
    err = caplog.text
    assert "active-learning curves recomputed for 3 reused run(s)" in err, err
    again = _snapshot(out)
    # the curves: recomputed under the current protocol, exactly as a fresh run makes them
    assert {n: b for n, (b, _) in again["active"].items()} == {n: b for n, (b, _) in fresh["active"].items()}
    # nothing else: same run keys and numbers (the record gains active_protocol), per-sample files untouched
    for name, (text, _) in again["runs"].items():
        rec = json.loads(text)
        assert rec["run_key"] == records[name]["run_key"] and rec["row"] == records[name]["row"]
        assert rec["fewshot"] == records[name]["fewshot"]
        assert rec["active_protocol"] == getattr(active, "ACTIVE_PROTOCOL", 0)
    assert again["per_sample"] == stale["per_sample"]
    assert {n: (out / n).read_bytes() for n in summaries} == summaries
    assert pd.read_csv(out / "timings.csv")["reused"].all()
    curves = pd.read_csv(out / "active_learning.csv")
    assert (curves["accuracy"] >= 0).all() and curves["C"].notna().all()

    # current curves are reused as they are
    caplog.clear()
    assert _evaluate(zoo, out, cache) == 0
    assert "recomputed" not in caplog.text
    assert _snapshot(out)["active"] == again["active"]
