"""``source: huggingface`` (transformers AutoModel) on local folders the tests write: never downloads."""

import textwrap

import numpy as np
import pytest
import torch
from zoo_factory import run_cli

from riskdecomp.features.datasets import load_dataset

transformers = pytest.importorskip("transformers")
transformers.logging.disable_progress_bar()  # the tests' own save_pretrained calls write to stderr otherwise


def _save_vit(folder, seed=0, pooler=False, safetensors=True):
    """A tiny ViT (32 px, 8 px patches, 16 dims) as ``save_pretrained`` writes it, with its preprocessing
    (``safetensors=False``: the weights as an old-style pickled ``pytorch_model.bin`` instead)."""
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)
    model = transformers.ViTModel(cfg, add_pooling_layer=pooler)
    model.save_pretrained(folder)
    if not safetensors:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model.eval()


def _zoo(tmp_path, body):
    p = tmp_path / "zoo.yaml"
    p.write_text("models:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return p


def test_local_model_features_are_its_class_token_and_are_cached(tmp_path, capsys):
    model = _save_vit(tmp_path / "vit")
    zoo = _zoo(tmp_path, """
        - {name: vit, source: huggingface, path: vit, representation: cls}
        - {name: vit_avg, source: huggingface, path: vit, representation: cls+avg}
    """)
    args = ["featurize", "--zoo", str(zoo), "--dataset", "digits", "--cache-dir", str(tmp_path / "c"),
            "--no-progress"]
    assert run_cli(*args) == 0
    out = capsys.readouterr().out
    assert "vit: train (1257, 16), test (540, 16), computed" in out and "vit_avg: train (1257, 32)" in out
    # the cached features are what the model itself gives on the processor's input (digits upscaled to 32 px)
    ds = load_dataset("digits")
    proc = transformers.ViTImageProcessor.from_pretrained(tmp_path / "vit")
    imgs = [ds.test.load_image(i).convert("RGB") for i in range(5)]
    with torch.no_grad():
        want = model(pixel_values=proc(images=imgs, return_tensors="pt")["pixel_values"]).last_hidden_state[:, 0]
    from riskdecomp.features.cache import featurize
    from riskdecomp.zoo import load_zoo

    f = featurize(load_zoo(zoo)["vit"], ds, cache_dir=tmp_path / "c", progress=False)
    assert f.forward_passes == 0  # from the cache
    # float32 forward passes of the same weights; resizing 8 -> 32 px by torchvision vs PIL differs in rounding
    np.testing.assert_allclose(f.x_test[:5], want.numpy(), atol=0.05)
    assert np.corrcoef(f.x_test[:5].ravel(), want.numpy().ravel())[0, 1] > 0.99
    # other weights in the folder: another identity, recomputed
    _save_vit(tmp_path / "vit", seed=1)
    assert run_cli(*args) == 0
    assert "vit: train (1257, 16), test (540, 16), computed" in capsys.readouterr().out


def test_a_folder_of_pickled_weights_is_refused_unread(tmp_path, capsys):
    _save_vit(tmp_path / "vit", safetensors=False)
    assert (tmp_path / "vit" / "pytorch_model.bin").is_file()
    zoo = _zoo(tmp_path, "- {name: vit, source: huggingface, path: vit, representation: cls}\n")
    assert run_cli("featurize", "--zoo", str(zoo), "--dataset", "digits", "--cache-dir", str(tmp_path / "c"),
                   "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("riskdecomp: error: model 'vit':")
    assert "no .safetensors weights (refusing pytorch_model.bin" in err


def test_a_model_tensor_missing_from_the_file_is_an_error_unless_strict_false(tmp_path, capsys):
    """AutoModel builds ViTModel with a pooler the saved model does not have: transformers would initialize it at
    random; for the pooled representation riskdecomp refuses, as for every other source, unless the entry says
    strict: false (cls / avg do not use the pooler: the first test loads the same folder strictly)."""
    _save_vit(tmp_path / "vit", pooler=False)
    zoo = _zoo(tmp_path, "- {name: vit, source: huggingface, path: vit}\n")
    assert run_cli("featurize", "--zoo", str(zoo), "--dataset", "digits", "--cache-dir", str(tmp_path / "c"),
                   "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing pooler.dense" in err and "strict: false" in err
    from riskdecomp.features.encoders import build_encoder
    from riskdecomp.zoo import load_zoo

    zoo = _zoo(tmp_path, "- {name: vit, source: huggingface, path: vit, strict: false, representation: avg}\n")
    enc = build_encoder(load_zoo(zoo)["vit"])
    assert enc.ignored_keys == {"missing": ["pooler.dense.bias", "pooler.dense.weight"], "unexpected": []}
    assert enc.input_size == 32 and enc.module(torch.zeros(2, 3, 32, 32)).shape == (2, 16)


@pytest.mark.parametrize("body, message", [
    ("{name: a, source: huggingface, model: facebook/dinov2-small, path: x}", "not both"),
    ("{name: a, source: huggingface}", "not neither"),
    ("{name: a, source: huggingface, model: ../etc}", "expected a hub repository id"),
    ("{name: a, source: huggingface, model: facebook/dinov2-small, revision: ../x}", "revision '../x'"),
    ("{name: a, source: huggingface, path: x, revision: v1}", "revision applies to a hub model"),
    ("{name: a, source: huggingface, model: facebook/dinov2-small, representation: 4xcls}", "timm models only"),
])
def test_bad_huggingface_entries_are_one_line_errors(tmp_path, capsys, body, message):
    zoo = _zoo(tmp_path, f"- {body}\n")
    assert run_cli("zoo", "check", "--zoo", str(zoo)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("riskdecomp: error:") and message in err


def test_hub_entries_are_listed_without_downloading(tmp_path, capsys):
    zoo = _zoo(tmp_path, "- {name: dino, source: huggingface, model: facebook/dinov2-small, revision: v1.0}\n")
    assert run_cli("zoo", "list", "--zoo", str(zoo), "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("dino,huggingface,facebook/dinov2-small,hub,")
    from riskdecomp.features.encoders import entry_identity
    from riskdecomp.zoo import load_zoo

    ident = entry_identity(load_zoo(zoo)["dino"])
    assert ident == f"hf|hub:facebook/dinov2-small@v1.0|pooled|transformers{transformers.__version__}"
