"""Leaderboard-shaped tables as every analysis reads them: the index, the few-shot settings and their sizes.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from riskdecomp.utils.schema import OUTCOMES

_SETTING_RE = re.compile(r"^fewshot_(\d+(?:\.\d+)?)(shot|pct)$")


# ----------------------------------------------------------------------------- helpers
def _table(df: pd.DataFrame) -> pd.DataFrame:
    """Copy with ``model`` and ``dataset`` as columns (model taken from the index if needed)."""
    out = df.copy()
    if "model" not in out.columns:
        out = out.reset_index()
        if "model" not in out.columns:
            out = out.rename(columns={out.columns[0]: "model"})
    if "dataset" not in out.columns:
        out["dataset"] = "default"
    out = out.reset_index(drop=True)
    for col in OUTCOMES:
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    return out


def fewshot_settings(df: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """Map few-shot column -> (k or p, "shot"|"pct") for columns ``fewshot_<k>shot|<p>pct``."""
    out = {}
    for col in df.columns:
        m = _SETTING_RE.fullmatch(str(col))
        if m and pd.to_numeric(df[col], errors="coerce").notna().any():
            out[col] = (float(m.group(1)), m.group(2))
    return out


def _setting_name(col: str) -> str:
    return col[len("fewshot_"):]


def _sizes(df: pd.DataFrame, col: str) -> pd.Series:
    """n (probe training examples) of a setting: full -> n_train; k-shot -> k * n_classes;
    p% -> floor(p/100 * n_train)."""
    n_train = pd.to_numeric(df.get("n_train"), errors="coerce")
    if col == "agg_risk":
        return n_train.astype(float)
    m = _SETTING_RE.fullmatch(str(col))  # from the name: a column without values (one dataset's) still has a size
    if m is None:
        raise ValueError(f"{col!r} is not a few-shot column (fewshot_<k>shot or fewshot_<p>pct)")
    k, kind = float(m.group(1)), m.group(2)
    if kind == "shot":
        return k * pd.to_numeric(df.get("n_classes"), errors="coerce").astype(float)
    return np.floor(k / 100.0 * n_train.astype(float))
