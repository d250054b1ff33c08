"""Journey: ImageNet-style 224 px JPEGs (Imagenette) with a ViT made for 224 px input and a small ConvNeXt."""

import pytest
from conftest import (
    FEW_MODELS,
    assert_journey_ok,
    save_timm_weights,
    timm_entries,
    write_zoo,
)

pytestmark = [pytest.mark.journey, pytest.mark.shared, pytest.mark.slow]


def test_imagenette_224(riskdecomp, imagenette, weights, tmp_path):
    vit = save_timm_weights("vit_tiny_patch16_224", tmp_path / "vit_tiny.safetensors")
    zoo = write_zoo(tmp_path / "zoo.yaml", timm_entries(weights, ["convnext_t"]), f"""
        - {{name: vit_tiny, source: timm, model: vit_tiny_patch16_224, weights: {vit},
           metadata: {{objective: init, architecture: vit_tiny}}}}
        """)
    out = tmp_path / "results"
    run = riskdecomp("evaluate", "--zoo", zoo, "--dataset", f"imagefolder:{imagenette}", "--out", out,
                     label="evaluate: vit_tiny_patch16_224 + test_convnext on 100/40 Imagenette 224 px JPEGs")
    assert_journey_ok(run, out, ["convnext_t", "vit_tiny"], justified_notes=FEW_MODELS)
