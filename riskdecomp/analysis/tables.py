"""Leaderboard-shaped tables as every analysis reads them: the index, the few-shot settings and their sizes.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from riskdecomp.utils.schema import OUTCOMES

_SETTING_RE = re.compile(r"^fewshot_(\d+(?:\.\d+)?)(shot|pct)$")


# ----------------------------------------------------------------------------- helpers
def leaderboard_table(df: pd.DataFrame) -> pd.DataFrame:
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


def setting_name(col: str) -> str:
    return col[len("fewshot_"):]


def setting_sizes(df: pd.DataFrame, col: str) -> pd.Series:
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


def reference_mask(board: pd.DataFrame) -> pd.Series:
    """Rows that are references (another model names them as its ``reference``): never a candidate for "best",
    never a design level. The leaderboard's ``is_reference`` column; without it (a folder written before that
    column) the models another row names in a ``reference`` column (a seed's ``x.s<k>`` counts as ``x``); without
    either, a row that is its own reference: its train->train error *is* its reference's (``err_train_train ==
    err_ref_train_train`` and usability exactly 0, protocol 3). The one rule every analysis and the report use."""
    if "is_reference" in board:
        v = board["is_reference"]
        if pd.api.types.is_bool_dtype(v):
            return v.fillna(False).astype(bool)
        return v.map(lambda x: str(x).strip().lower() in ("true", "1", "1.0")).astype(bool)
    if "reference" in board and "model" in board:
        named = {str(v) for v in board["reference"].dropna() if str(v)}
        named |= {n.rsplit(".s", 1)[0] for n in named if n.rsplit(".s", 1)[-1].isdigit()}
        return board["model"].astype(str).isin(named)
    if {"err_train_train", "err_ref_train_train", "usability"} <= set(board.columns):
        own = (pd.to_numeric(board["err_train_train"], errors="coerce")
               == pd.to_numeric(board["err_ref_train_train"], errors="coerce")) & (board["usability"] == 0)
        return own.fillna(False).astype(bool)
    return pd.Series(False, index=board.index)
