"""The real study's cost, written down (issue 16, section 4): per encoder and for 100 encoders on ImageNet
(1,281,167 train + 50,000 test images, 1000 classes), the decode+forward time, the decomposition time and the
disk, on one 16-core CPU machine and on one H200, computed from measured anchors.

Anchors (rows of the committed results JSONs, each named in the output):

- decode+forward: the ``featurize_<model>`` rows (real JPEGs at 224 px, timm resnet50 d=2048 and vit_small
  d=384): ``images_per_s``. CPU: the 2-core rate of ``results.json`` scaled linearly to 16 cores (an optimistic
  extrapolation: real scaling of decoding + a CPU forward pass over 8x the cores is at most linear). H200: the rate
  measured there (``results-nvidia-h200.json``, JPEG decoding on its 16 CPU cores), used as is; beside it the pure
  forward rate measured there (``forward_images_per_s``), the floor that GPU decoding could approach.
- decomposition: the ``decomposition_2048x100`` row (the full tuned decomposition, 50k x 2048 x 100, on 2 cores),
  scaled by the work of one L-BFGS evaluation, n x d x K (x 25.6 for n, x 10 for K, x d / 2048), assuming the same
  number of evaluations per fit at ImageNet size, then linearly to 16 cores. H200: "not measured" (no ImageNet-size
  GPU run exists; the 50k-point GPU anchor is launch/synchronization-bound, so no FLOP-proportional scaling of it
  is meaningful).
- disk: float16 features, (train + test) x d x 2 bytes (exact, not measured).

Everything is computed from the JSON files: ``estimate()`` returns rows for ``benchmarks/run.py`` (group
``studycost``; they land in ``results.json`` beside the anchors they are computed from). Run alone:
``python benchmarks/study_cost.py`` prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGENET_TRAIN, IMAGENET_TEST, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
CPU_CORES = 16
ENCODERS = 100
#: (results row, feature dimension, display name)
MODELS = (("resnet50", 2048), ("vit_small", 384))
NOT_MEASURED = "not measured"


def _rows(path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    return {r["name"]: r for r in doc["results"]}, doc.get("machine") or {}


def estimate(anchors: str | Path = HERE / "results.json",
             gpu_anchors: str | Path = HERE / "results-nvidia-h200.json") -> list:
    """Rows ``study_cost_<model>`` (per encoder) and ``study_cost_100_<model>`` (100 such encoders), each with
    hours on the 16-core CPU machine and on the H200 (``NOT_MEASURED`` where no anchor exists), disk in GB, and
    the anchors used."""
    cpu, cpu_machine = _rows(anchors)
    gpu, _ = _rows(gpu_anchors) if Path(gpu_anchors).exists() else ({}, {})
    cores = int(cpu_machine.get("cores") or 2)
    images = IMAGENET_TRAIN + IMAGENET_TEST
    dec = cpu.get("decomposition_2048x100") or {}
    rows = []
    for model, d in MODELS:
        feat = cpu.get(f"featurize_{model}") or {}
        feat_gpu = gpu.get(f"featurize_{model}") or {}
        rate = feat.get("images_per_s")
        featurize_cpu_h = images / (rate * CPU_CORES / cores) / 3600 if rate else None
        rate_gpu = feat_gpu.get("images_per_s")
        featurize_gpu_h = images / rate_gpu / 3600 if rate_gpu else None
        fwd_gpu = feat_gpu.get("forward_images_per_s")  # the pure forward rate: what GPU decoding could reach
        forward_gpu_h = images / fwd_gpu / 3600 if fwd_gpu else None
        decomp_cpu_h = None
        if dec.get("seconds") and dec.get("n") and dec.get("k") and dec.get("d"):
            work = (IMAGENET_TRAIN / dec["n"]) * (IMAGENET_CLASSES / dec["k"]) * (d / dec["d"])
            decomp_cpu_h = dec["seconds"] * work * cores / CPU_CORES / 3600
        disk_gb = images * d * 2 / 1e9
        cpu_total = featurize_cpu_h + decomp_cpu_h if featurize_cpu_h and decomp_cpu_h else None

        def r2(v):
            return None if v is None else round(v, 2)

        base = {"size": f"ImageNet {images} images x d={d} x {IMAGENET_CLASSES} classes", "model": model, "d": d,
                "anchor_rows": [f"results.json:featurize_{model}", "results.json:decomposition_2048x100",
                                f"results-nvidia-h200.json:featurize_{model}"],
                "anchor_cores": cores, "cpu_cores": CPU_CORES, "images": images,
                "extrapolation": ("CPU: linear in cores from the 2-core anchors; decomposition x n d K work at the "
                                  "same evaluations per fit; H200 decode+forward as measured there (CPU JPEG "
                                  "decoding), H200 decomposition not measured")}
        for count, name in ((1, f"study_cost_{model}"), (ENCODERS, f"study_cost_{ENCODERS}_{model}")):
            rows.append({
                "name": name, **base, "encoders": count,
                "cpu16_featurize_hours": r2(featurize_cpu_h and featurize_cpu_h * count),
                "cpu16_decomposition_hours": r2(decomp_cpu_h and decomp_cpu_h * count),
                "cpu16_total_hours": r2(cpu_total and cpu_total * count),
                "cpu16_total_days": r2(cpu_total and cpu_total * count / 24),
                "h200_featurize_hours": r2(featurize_gpu_h and featurize_gpu_h * count) if featurize_gpu_h
                else NOT_MEASURED,
                "h200_forward_only_hours": r2(forward_gpu_h * count) if forward_gpu_h else NOT_MEASURED,
                "h200_decomposition_hours": NOT_MEASURED,
                "h200_total_hours": NOT_MEASURED,
                "disk_gb_float16": round(disk_gb * count, 1),
                "seconds": None if cpu_total is None else round(cpu_total * count * 3600, 1),
                "target": "",
                "met": None,
                "notes": (f"needs the anchor rows featurize_{model} and decomposition_2048x100 in {Path(anchors).name}"
                          if cpu_total is None else
                          f"estimate, not a measurement: {count} x {model} (d={d}) on ImageNet; 16-core CPU "
                          f"{r2(cpu_total and cpu_total * count)} h; H200 decode+forward "
                          f"{r2(featurize_gpu_h and featurize_gpu_h * count)} h, decomposition not measured; "
                          f"disk {disk_gb * count:.1f} GB float16"),
            })
    return rows


def main() -> None:
    rows = estimate(*(sys.argv[1:3]))
    print(f"{'row':28} {'CPU16 feat h':>12} {'CPU16 dec h':>12} {'CPU16 total d':>13} {'H200 feat h':>12} "
          f"{'disk GB':>8}")
    for r in rows:
        print(f"{r['name']:28} {r['cpu16_featurize_hours']!s:>12} {r['cpu16_decomposition_hours']!s:>12} "
              f"{r['cpu16_total_days']!s:>13} {r['h200_featurize_hours']!s:>12} {r['disk_gb_float16']:>8}")


if __name__ == "__main__":
    main()
