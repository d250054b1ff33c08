"""Journeys of a user who spreads the models over processes: ``--jobs 2`` and the dask backend, on images read
from files (each job loads its own JPEGs), default flags otherwise."""

import pytest
from conftest import FEW_MODELS, assert_journey_ok, timm_entries, write_zoo

pytestmark = [pytest.mark.journey, pytest.mark.shared, pytest.mark.slow]
MODELS = ["vit_t", "resnet_t"]


@pytest.fixture(scope="module")
def zoo(weights, tmp_path_factory):
    return write_zoo(tmp_path_factory.mktemp("parallel") / "zoo.yaml", timm_entries(weights, MODELS))


@pytest.mark.parametrize("how", [["--jobs", "2"], ["--backend", "dask"]], ids=["jobs2", "dask"])
def test_parallel_evaluate_on_jpegs(riskdecomp, zoo, cifar, tmp_path, how):
    out = tmp_path / "results"
    run = riskdecomp("evaluate", "--zoo", zoo, "--dataset", f"imagefolder:{cifar}", "--out", out, *how,
                     label=f"evaluate {' '.join(how)}: 2 timm models on 120/40 CIFAR JPEGs")
    assert_journey_ok(run, out, MODELS, justified_notes=FEW_MODELS)
