"""Sensitivity of the verdicts on agg_risk to the inference engine, on a results folder (default: results/).

For every baseline contrast and controlled pair: the verdict of the engine (model + seed fixed effects over every
run, seed and test-point noise, Holm), of the old test (paired t-test on the seeds both models share, Holm) and of
Welch on all seeds (Holm), each Holm family being the file's rows, as in the CSVs. Prints a markdown table and the
number of contrasts whose verdict changes old -> new (docs/inference.md quotes it).

    python scripts/inference_sensitivity.py [--results results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from riskdecomp.analysis.effects import baseline_contrasts, controlled_pairs, holm


def verdicts(results: Path, outcome: str = "agg_risk") -> pd.DataFrame:
    """One row per contrast: file, comparison, delta, its 95 % CI and the three verdicts (* = significant)."""
    board = pd.read_csv(results / "leaderboard.csv")
    seeds = pd.read_csv(results / "leaderboard_seeds.csv")
    per_sample = results / "per_sample" if (results / "per_sample").is_dir() else None
    tables = {"baseline_contrasts": baseline_contrasts(board, seeds, per_sample=per_sample),
              "controlled_pairs": controlled_pairs(board, seeds=seeds, per_sample=per_sample)}
    rows = []
    for name, t in tables.items():
        if t.empty:
            continue
        old = holm(t[f"p_paired_{outcome}"].to_numpy(float)) < 0.05
        welch = holm(t[f"p_welch_{outcome}"].to_numpy(float)) < 0.05
        for i, r in enumerate(t.itertuples(index=False)):
            r = r._asdict()
            what = (f"{r['model']} - {r['baseline']}" if name == "baseline_contrasts"
                    else f"{r['model_b']} - {r['model_a']} ({r['field']})")
            rows.append({"file": name, "comparison": what, "delta": r[f"delta_{outcome}"],
                         "ci": f"[{r[f'delta_{outcome}_lo']:+.2f}, {r[f'delta_{outcome}_hi']:+.2f}]",
                         "adjusted_ci": f"[{r[f'delta_{outcome}_adj_lo']:+.2f}, {r[f'delta_{outcome}_adj_hi']:+.2f}]",
                         "new_FE": bool(r[f"significant_{outcome}"]), "old_paired": bool(old[i]),
                         "welch": bool(welch[i]), "p_holm_new": r[f"p_holm_{outcome}"]})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", type=Path)
    args = ap.parse_args(argv)
    v = verdicts(args.results)
    mark = lambda b: "significant" if b else "-"  # noqa: E731
    print("| file | comparison | delta agg_risk | 95 % CI (unadjusted) | CI at Holm's level | FE (new) | "
          "paired, shared seeds (old) | Welch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in v.itertuples():
        print(f"| {r.file} | {r.comparison} | {r.delta:+.2f} | {r.ci} | {r.adjusted_ci} | {mark(r.new_FE)} | "
              f"{mark(r.old_paired)} | {mark(r.welch)} |")
    changed = v[v["new_FE"] != v["old_paired"]]
    print(f"\n{len(changed)} of {len(v)} contrasts change verdict old -> new "
          f"({int((changed['new_FE']).sum())} become significant, {int((~changed['new_FE']).sum())} stop being); "
          f"significant: new {int(v['new_FE'].sum())}, old {int(v['old_paired'].sum())}, Welch {int(v['welch'].sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
