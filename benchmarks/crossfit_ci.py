"""Cross-fitted vs single-S held-out error on real image features: CI widths of probe_gen and enc_gen.

    python benchmarks/crossfit_ci.py --images DIR [--seeds 5] [--out benchmarks/crossfit-ci.json]

``DIR`` holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (e.g. a subset extracted from
``../shared/data/cifar10-jpg``). Features: a timm ``resnet18`` with seeded random weights (``pretrained=False``,
nothing downloaded), 32 px images, global-average-pooled 512-d features. For each seed (of S / the folds and the
bootstrap) the decomposition runs with ``holdout="single"`` (one S of min(|D_te|, 20% |D_tr|) points) and
``holdout="crossfit"`` (5 folds). Written: per seed and mode the components, their 95% CI widths and
``enc_gen_size_gap``, plus the mean widths and the spread (std over seeds) of the point estimates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_split(root: Path, split: str):
    from PIL import Image

    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / split / c).glob("*.jpg")):
            xs.append(np.asarray(Image.open(f).convert("RGB").resize((32, 32)), dtype=np.float32) / 255.0)
            ys.append(ci)
    x = np.stack(xs).transpose(0, 3, 1, 2)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32), np.array(ys)


def features(x: np.ndarray) -> np.ndarray:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 256):
            out.append(model(torch.from_numpy(x[i:i + 256])).numpy())
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "crossfit-ci.json")
    args = ap.parse_args(argv)
    from riskdecomp.estimators.decomposition import decompose
    from riskdecomp.utils.atomic import atomic_write_text, jsonable

    t0 = time.perf_counter()
    x_tr, y_tr = load_split(args.images, "train")
    x_te, y_te = load_split(args.images, "test")
    z_tr, z_te = features(x_tr), features(x_te)
    t_feat = time.perf_counter() - t0
    keys = ("err_train_train", "err_heldout", "err_test", "usability", "probe_gen", "enc_gen", "enc_gen_size_gap",
            "agg_risk")
    runs = []
    for seed in range(args.seeds):
        for mode in ("single", "crossfit"):
            t = time.perf_counter()
            d = decompose(z_tr, y_tr, z_te, y_te, seed=seed, holdout=mode, n_boot=1000, device="cpu")
            row = {"seed": seed, "holdout": mode, "n_sub": d["n_sub"], "seconds": time.perf_counter() - t}
            for k in keys:
                row[k] = d[k]
                row[f"{k}_ci_width"] = d[f"{k}_hi"] - d[f"{k}_lo"]
            runs.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    summary = {}
    for mode in ("single", "crossfit"):
        rows = [r for r in runs if r["holdout"] == mode]
        summary[mode] = {
            **{f"mean_{k}_ci_width": float(np.mean([r[f"{k}_ci_width"] for r in rows])) for k in keys},
            **{f"std_over_seeds_{k}": float(np.std([r[k] for r in rows], ddof=1)) for k in keys},
            "mean_seconds": float(np.mean([r["seconds"] for r in rows])),
        }
    doc = {"data": f"{args.images}: {len(y_tr)} train / {len(y_te)} test images, {len(set(y_tr))} classes",
           "features": "timm resnet18, random init (torch seed 0), 32 px, 512-d", "featurize_seconds": t_feat,
           "runs": runs, "summary": summary}
    atomic_write_text(args.out, json.dumps(jsonable(doc), indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
