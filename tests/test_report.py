"""Report: plots and a self-contained HTML page from a synthetic results directory."""

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from riskdecomp.analysis import scaling_law_predict
from riskdecomp.errors import RiskdecompError
from riskdecomp.report import make_report
from riskdecomp.report.plots import make_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


def _leaderboard(n=6, seed=0):
    rng = np.random.default_rng(seed)
    lb = pd.DataFrame({
        "model": [f"enc{i}" for i in range(n)], "dataset": "toy", "n_train": 5000, "n_test": 1000,
        "n_classes": 10, "n_sub": 1000,
        "approx": rng.uniform(0, 2, n), "usability": rng.uniform(0, 10, n),
        "probe_gen": rng.uniform(2, 20, n), "enc_gen": rng.uniform(0, 3, n),
        "objective": ["simclr", "dino", "simclr", "dino", "byol", "byol"][:n],
        "family": ["resnet", "vit"] * (n // 2), "epochs": [100, 100, 300, 300, 100, 300][:n],
        "architecture": ["resnet18", "vits", "resnet18", "vits", "resnet18", "vits"][:n],
    })
    for col, size in {"agg_risk": 5000, "fewshot_1shot": 10, "fewshot_5shot": 50, "fewshot_10pct": 500}.items():
        lb[col] = scaling_law_predict(lb.approx, lb.usability, lb.probe_gen, lb.enc_gen, 4000, size, 0.3, 0.4)
        lb[col] += rng.normal(0, 0.3, n)
    lb["agg_risk_lo"], lb["agg_risk_hi"] = lb.agg_risk - 1, lb.agg_risk + 1
    lb.loc[0, "fewshot_5shot"] = np.nan  # partial NaN must not break anything
    return lb


def _results_dir(root: Path, optional=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lb = _leaderboard()
    lb.to_csv(root / "leaderboard.csv", index=False)
    if not optional:
        return root
    rng = np.random.default_rng(1)
    rows = []
    for m in lb.model[:3]:
        for score in ("knn_10_cos", "neg_norm"):
            for metric in ["kendall_tau", "auroc", "aurc"] + [f"bin_acc_{i}" for i in range(10)]:
                v = rng.uniform(0, 1)
                rows.append(dict(model=m, dataset="toy", score=score, target="err01", metric=metric,
                                 value=v, ci_lo=v - 0.05, ci_hi=v + 0.05))
    rows[0]["value"] = np.nan
    pd.DataFrame(rows).to_csv(root / "uncertainty.csv", index=False)
    (root / "per_sample").mkdir()
    for m in lb.model[:2]:
        pd.DataFrame({"knn_10_cos": rng.uniform(size=200), "neg_norm": rng.normal(size=200),
                      "err01": rng.integers(0, 2, 200), "loss": rng.uniform(size=200),
                      "brier_ovo": rng.uniform(size=200)}).to_csv(root / "per_sample" / f"{m}__toy.csv", index=False)
    al = [dict(model=m, acquisition=a, seed=s, n_labels=n, accuracy=0.5 + 0.001 * n + 0.01 * s,
               worst_class_accuracy=0.3) for m in lb.model[:2] for a in ("random", "entropy")
          for s in range(2) for n in (20, 40, 60)]
    pd.DataFrame(al).to_csv(root / "active_learning.csv", index=False)
    pd.DataFrame([dict(model="enc0", acquisition="entropy", target="max", le=1.8)]).to_csv(
        root / "label_efficiency.csv", index=False)
    return root


def _check_page(report: Path) -> _Collect:
    text = report.read_text()
    parser = _Collect()
    parser.feed(text)
    for src in parser.imgs:
        assert not src.startswith(("/", "http")), src  # relative paths only
        path = report.parent / src
        assert path.is_file(), src
        assert path.read_bytes()[:8] == PNG_MAGIC, src
        assert path.with_suffix(".svg").is_file()
    assert "script" not in parser.tags and "<link" not in text  # self-contained, no JS / CDN
    return parser


def test_full_results_dir(tmp_path):
    root = _results_dir(tmp_path / "res")
    report = make_report(root)
    assert report == root / "report.html"
    page = _check_page(report)
    names = {Path(s).stem for s in page.imgs}
    assert {"components_toy", "usability_vs_probe_gen", "ranking_change_toy", "scaling_law",
            "uncertainty_bins", "uncertainty_metrics", "risk_coverage", "active_learning"} <= names
    text = report.read_text()
    for model in _leaderboard().model:
        assert model in text  # leaderboard table
    assert (root / "analysis" / "summary.json").is_file()
    assert (root / "analysis" / "design_effects.csv").is_file()


def test_optional_inputs_absent(tmp_path):
    root = _results_dir(tmp_path / "res", optional=False)
    page = _check_page(make_report(root, color_by="no_such_field"))
    names = {Path(s).stem for s in page.imgs}
    assert "components_toy" in names and "active_learning" not in names
    assert "active_learning.csv absent" in (root / "report.html").read_text()


def test_empty_results_dir_and_bad_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = _check_page(make_report(empty))
    assert page.imgs == []
    with pytest.raises(RiskdecompError):
        make_report(tmp_path / "missing")


def test_make_plots_returns_captions(tmp_path):
    root = tmp_path / "res"
    root.mkdir()
    _leaderboard()[["model", "dataset", "approx", "usability", "probe_gen", "enc_gen"]].to_csv(
        root / "leaderboard.csv", index=False)
    plots = make_plots(root, tmp_path / "out", color_by=None)
    assert {p.stem for p, _ in plots} == {"components_toy", "usability_vs_probe_gen"}
    assert all(p.is_file() and p.read_bytes()[:8] == PNG_MAGIC and c for p, c in plots)


def test_report_from_published_table(shared_dir, tmp_path):
    from riskdecomp.published import load_published

    pub = load_published(shared_dir / "reference" / "ssl-risk-decomposition" / "all_results.csv")
    root = tmp_path / "res"
    root.mkdir()
    pub.head(15).reset_index().to_csv(root / "leaderboard.csv", index=False)
    page = _check_page(make_report(root))
    assert {"components_imagenet", "scaling_law", "design_effects"} <= {Path(s).stem for s in page.imgs}
