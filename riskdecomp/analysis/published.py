"""Import the published 169-model table of the risk-decomposition study into our leaderboard schema.

The source file (``all_results.csv``, MIT licence) has a two-row header (group, field) and the
model name as index. :func:`load_published` flattens it to one row per model with the same column
names as our own leaderboard (see ``notes``/README), so every analysis and plot works on both.

Column mapping (decisions):

- ``risk_decomposition/*`` -> ``approx``, ``usability``, ``probe_gen``, ``enc_gen`` (percent error).
- ``metrics/train_test`` -> ``agg_risk`` (full-shot linear-probe test error);
  ``train-nperclass-{30,5,3}_test`` -> ``fewshot_{30,5,3}shot``; ``train-balsbst-ntrain0.01_test`` ->
  ``fewshot_1pct``.
- hyperparameters / metadata / statistics keep their own names, except the hyperparameter
  ``n_classes`` (number of classes of a clustering SSL objective), which is renamed
  ``ssl_n_classes`` because ``n_classes`` is the number of downstream classes in our schema (1000).
- ``<component>_was_clipped`` (boolean) is inferred as ``value == 0`` (the study clipped negative estimates to 0); named apart from our leaderboard's numeric ``<component>_clipped`` (the clipped value).
- Constants: dataset="imagenet", n_train=1,281,167, n_test=50,000 (ImageNet val), n_sub=50,000
  (the held-out subset of train behind the decomposition), n_classes=1000, source="published".

Facts verified in the file (see tests): 169 models; approx (and usability) NaN for 23 models; for
the 122 rows where all four components are > 0 they sum to ``train_test`` to float precision
(max abs difference 0.0); ``*_vars == *_intra_var / *_inter_var`` and
``*_nc1norm == *_nc1 / sqrt(*_rank)`` hold exactly (aug variants use the rank of the un-augmented
split: ``trainaug_nc1norm = trainaug_nc1 / sqrt(train_rank)``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from riskdecomp.utils.errors import RiskdecompError
from riskdecomp.utils.schema import COMPONENTS

IMAGENET_N_TRAIN = 1_281_167
IMAGENET_N_TEST = 50_000
IMAGENET_N_SUB = 50_000
IMAGENET_N_CLASSES = 1000

METRIC_RENAMES = {
    "train_test": "agg_risk",
    "train-nperclass-30_test": "fewshot_30shot",
    "train-nperclass-5_test": "fewshot_5shot",
    "train-nperclass-3_test": "fewshot_3shot",
    "train-balsbst-ntrain0.01_test": "fewshot_1pct",
}

#: Field renamed to avoid a clash with our downstream ``n_classes`` column.
FIELD_RENAMES = {"n_classes": "ssl_n_classes"}

_GROUPS = ("risk_decomposition", "metrics", "hyperparameters", "metadata", "statistics")


def load_published(path: str | Path) -> pd.DataFrame:
    """Read the published ``all_results.csv`` into our leaderboard schema.

    Returns a DataFrame indexed by lower-case model name (index name ``model``), one row per model.
    Missing values stay NaN. Raises :class:`RiskdecompError` if the file is absent or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise RiskdecompError(f"published table not found: {path}")
    try:
        raw = pd.read_csv(path, header=[0, 1], index_col=0)
    except (ValueError, pd.errors.ParserError) as exc:
        raise RiskdecompError(f"published table {path} is not a two-row-header CSV: {exc}") from exc
    groups = set(raw.columns.get_level_values(0))
    missing = [g for g in ("risk_decomposition", "metrics") if g not in groups]
    if missing:
        raise RiskdecompError(f"published table {path} lacks column group(s) {missing}")

    parts = []
    for group in _GROUPS:
        if group not in groups:
            continue
        block = raw[group].copy()
        if group == "metrics":
            block = block.rename(columns=METRIC_RENAMES)
        elif group in ("hyperparameters", "metadata"):
            block = block.rename(columns=FIELD_RENAMES)
        parts.append(block)
    df = pd.concat(parts, axis=1)
    df = df.loc[:, ~df.columns.duplicated()]
    for comp in COMPONENTS:
        if comp not in df:
            raise RiskdecompError(f"published table {path} lacks component column {comp!r}")
        df[comp] = pd.to_numeric(df[comp], errors="coerce")
        df[f"{comp}_was_clipped"] = (df[comp] == 0).where(df[comp].notna())
    df.index = df.index.astype(str).str.lower()
    df.index.name = "model"

    df.insert(0, "dataset", "imagenet")
    df.insert(1, "source", "published")
    df["n_train"] = IMAGENET_N_TRAIN
    df["n_test"] = IMAGENET_N_TEST
    df["n_sub"] = IMAGENET_N_SUB
    df["n_classes"] = IMAGENET_N_CLASSES
    return df
