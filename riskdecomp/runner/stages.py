"""Zoo-wide stages that need every record at once: ensemble scores, uncertainty metrics, active learning tables.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from riskdecomp.estimators.active import ACTIVE_PROTOCOL, label_efficiency
from riskdecomp.estimators.uncertainty import reference_indices
from riskdecomp.runner.jobs import load_run_features
from riskdecomp.runner.parallel import parallel_map
from riskdecomp.runner.records import Settings
from riskdecomp.utils.atomic import write_csv
from riskdecomp.utils.errors import RiskdecompError
from riskdecomp.utils.names import ensemble_path, result_path
from riskdecomp.utils.schema import PER_SAMPLE_TARGETS, score_columns
from riskdecomp.zoo import Zoo

log = logging.getLogger(__name__)


def zoo_ensembles(zoo: Zoo, records: list, dataset: str, out: Path, cache_dir: Path, settings: Settings) -> None:
    """Ensemble scores across the zoo's self-supervised encoders (same reference set) per dataset, written to
    ``ensemble/<dataset>.csv`` (columns ``index``, ``y`` and ``ens_*``, one row per test point). The per-sample files
    the jobs wrote are not touched: :func:`zoo_uncertainty_metrics` joins the two on ``index`` and ``y``. Features come
    from the
    cache; records whose features cannot be loaded with this run's dataset are left out. With fewer than two
    self-supervised members the dataset has no ensemble, and a file left from an earlier run is removed."""
    from riskdecomp.estimators.uncertainty import ensemble_scores

    per_ds: dict = {}
    for r in records:
        per_ds.setdefault(r["dataset"], []).append(r["model"])
    for ds_name, names in per_ds.items():
        feats, first = {}, None
        for n in names:
            entry = zoo[n]
            if entry.metadata.get("objective") in ("supervised", "init"):  # the ensemble of the SSL encoders
                continue
            try:
                f = load_run_features(entry, dataset, settings, cache_dir)
            except RiskdecompError:
                continue
            if f.dataset != ds_name:  # a record of another dataset: its ensemble was made by that dataset's run
                continue
            if first is None:
                first = f
            elif not (np.array_equal(f.y_train, first.y_train) and np.array_equal(f.y_test, first.y_test)):
                # e.g. two precomputed-features entries that name one dataset but hold different points
                log.warning("model %r: its %s points differ from model %r's (labels or sizes); left out of the "
                            "ensemble scores", n, ds_name, first.model)
                continue
            feats[n] = (f.x_test, f.x_train)
        path = ensemble_path(out, ds_name)
        if len(feats) < 2:
            path.unlink(missing_ok=True)
            continue
        n_train = len(first.y_train)
        ref = reference_indices(n_train, n_ref=settings.n_ref, seed=settings.seed)
        with warnings.catch_warnings():  # members of different widths: ens_var is NaN by design
            warnings.filterwarnings("ignore", message="ens_var skipped")
            ens = ensemble_scores(feats, ref, k=min(100, max(1, n_train // 10)))
        ens.insert(0, "index", np.arange(len(ens)))
        ens.insert(1, "y", first.y_test)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(ens, path)


def _record_uncertainty(path: str, ens_path: Optional[str], model: str, dataset: str, n_boot: int,
                        seed: int) -> Optional[pd.DataFrame]:
    """One record's score metrics (``reliability.evaluate_scores``) from its per-sample file, joined on ``index``
    with its dataset's ensemble scores when there are any for the same test points."""
    from riskdecomp.estimators.reliability import evaluate_scores

    ps = pd.read_csv(path)
    ps = ps.drop(columns=[c for c in ps.columns if c.startswith("ens_")])  # put there by earlier releases
    if ens_path is not None:
        ens = pd.read_csv(ens_path)
        same = ps[["index", "y"]].merge(ens[["index", "y"]], on=["index", "y"], how="inner")
        if len(ens) == len(ps) == len(same):  # the same test points (an ensemble of another test set is not scored)
            ps = ps.merge(ens, on=["index", "y"], how="left", validate="one_to_one")
    target_cols = [c for c in PER_SAMPLE_TARGETS if c in ps.columns]
    score_cols = score_columns(ps.columns)
    res = evaluate_scores(ps[score_cols], ps[target_cols], n_boot=n_boot, seed=seed)
    res.insert(0, "model", model)
    res.insert(1, "dataset", dataset)
    return res


def zoo_uncertainty_metrics(records: list, out: Path, settings: Settings, jobs: int = 1) -> pd.DataFrame:
    """Every per-sample score's metrics (``reliability.evaluate_scores``) per (model, dataset) record, ``jobs``
    records at a time (the result does not depend on ``jobs``)."""
    args = [(str(p), str(e) if (e := ensemble_path(out, r["dataset"])).exists() else None, r["model"], r["dataset"],
             settings.uncertainty_boot, settings.seed) for r in records
            if (p := result_path(out, "per_sample", r["model"], r["dataset"])).exists()]
    frames = parallel_map(_record_uncertainty, args, max(1, min(jobs, len(args))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def zoo_active(records: list, out: Path) -> tuple:
    """All active-learning curves and label efficiencies of the records (from ``active/<stem>.csv``). Curves of an
    older protocol (the record's ``active_protocol``) are kept, with a warning: ``evaluate`` recomputes them."""
    curves, effs, stale = [], [], []
    for r in records:
        p = result_path(out, "active", r["model"], r["dataset"])
        if not p.exists():
            continue
        if r.get("active_protocol") != ACTIVE_PROTOCOL:
            stale.append(r["model"])
        c = pd.read_csv(p)
        curves.append(c)
        err = r["row"].get("err_test")
        full = (100.0 - float(err)) / 100.0 if err is not None else None  # curves hold accuracy fractions
        le = label_efficiency(c.drop(columns=["model", "dataset"]), full_accuracy=full)
        le.insert(0, "model", r["model"])
        le.insert(1, "dataset", r["dataset"])
        effs.append(le)
    if stale:
        log.warning("%s: active-learning curves of %d run(s) made with an older protocol (C fixed at 1, not chosen as "
                    "few-shot chooses it): %s; rerun evaluate on this folder to recompute them (nothing else is "
                    "recomputed)", out / "active", len(stale), ", ".join(stale))
    cat = (lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame())
    return cat(curves), cat(effs)
