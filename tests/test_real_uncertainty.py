"""Real images: pretrain small encoders on a CIFAR-10 subset (../shared), evaluate, and check that the uncertainty
report says — with confidence intervals — whether each label-free score predicts the probe's errors."""


import pandas as pd
import pytest
from test_pretrain import _extract

from riskdecomp.runner.pipeline import evaluate
from riskdecomp.runner.records import Settings
from riskdecomp.zoo import parse_zoo

RECIPE = dict(backbone="smallcnn", width=8, z_dim=16, epochs=3, batch_size=100, lr=3e-3, image_size=16,
              head={"kind": "mlp", "depth": 2, "width": 32, "out_dim": 16})


@pytest.fixture(scope="module")
def cifar_run(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    src = shared_dir / "data" / "cifar10-jpg"
    _extract(src / "cifar10_train_jpg.tar.gz", root / "train", 50)
    _extract(src / "cifar10_test_jpg.tar.gz", root / "test", 30)
    models = [
        {"name": "simclr_s0", "source": "recipe", "recipe": {"objective": "simclr", "seed": 0, **RECIPE},
         "metadata": {"objective": "simclr"}},
        {"name": "simclr_s1", "source": "recipe", "recipe": {"objective": "simclr", "seed": 1, **RECIPE},
         "metadata": {"objective": "simclr"}},
    ]
    zoo = parse_zoo({"models": models})
    settings = Settings(n_boot=100, fewshot_seeds=1, shots=(1,), fractions=(), active=False, statistics=False,
                        uncertainty_boot=200, progress=False)
    out = root / "out"
    res = evaluate(zoo, f"imagefolder:{root}", out, cache_dir=root / "cache", settings=settings)
    assert res.ok, res.failures
    return pd.read_csv(out / "uncertainty.csv"), res


def test_uncertainty_report_on_real_images_has_cis_for_knn_and_consistency(cifar_run):
    unc, res = cifar_run
    table = unc[(unc.target == "err01") & unc.metric.isin(["auroc"])
                | (unc.target == "brier_ovo") & (unc.metric == "kendall_tau")]
    print("\n" + table.pivot_table(index=["score"], columns=["model", "target", "metric"],
                                   values=["value", "ci_lo", "ci_hi"]).round(3).to_string())  # shown with -s
    assert set(unc["model"]) == {"simclr_s0", "simclr_s1"}
    au = unc[(unc.target == "err01") & (unc.metric == "auroc")].set_index(["model", "score"])
    for score in ("knn_10_cos", "knn_100_euc", "gmm_nll", "neg_norm"):
        assert (("simclr_s0", score) in au.index), score
    ens = [s for s in au.index.get_level_values("score") if s.startswith("ens_nc")]
    assert ens, "ensemble neighbourhood consistency is reported"
    assert (au["ci_lo"] <= au["value"] + 1e-12).all() and (au["value"] <= au["ci_hi"] + 1e-12).all()
    assert au["value"].between(0, 1).all()
    # the label-using probe entropy must detect the probe's own errors better than chance (a sanity anchor for
    # the pipeline: per-sample targets, score orientation and the metric all have to be right for this)
    ent = au.xs("probe_entropy", level="score")
    assert (ent["value"] > 0.5).all() and (ent["ci_hi"] > 0.55).all(), ent
    # Kendall tau against the Brier target is reported with its sign (never folded)
    tau = unc[(unc.metric == "kendall_tau") & (unc.target == "brier_ovo")]
    assert len(tau) and tau["value"].between(-1, 1).all()
    # the models are real encoders: better than the 90% chance error
    assert (res.leaderboard["err_test"] < 85).all()
