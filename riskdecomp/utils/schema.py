"""Names shared by producers and consumers of riskdecomp's outputs, defined once.

- :data:`COMPONENTS`: the four risk components (Dubois et al. 2023), in the order of the identity
  ``TOTAL = approx + usability + probe_gen + enc_gen``; :data:`TOTAL` is ``agg_risk``.
- :data:`ALT_COMPONENTS`: the alternative (train+test) decomposition's two components.
- Per-sample files (``per_sample/<model>@<dataset>.csv``): key columns :data:`PER_SAMPLE_KEYS`, per-point
  targets :data:`PER_SAMPLE_TARGETS` (what an uncertainty score is meant to predict), and every other column is
  an uncertainty score (:func:`score_columns`).
"""

from __future__ import annotations

COMPONENTS = ("approx", "usability", "probe_gen", "enc_gen")
TOTAL = "agg_risk"
OUTCOMES = (*COMPONENTS, TOTAL)
ALT_COMPONENTS = ("probe_gen_alt", "enc_gen_alt")

PER_SAMPLE_KEYS = ("index", "y", "pred")
PER_SAMPLE_TARGETS = ("err01", "loss", "brier_ovo")


def score_columns(columns) -> list:
    """The uncertainty-score columns of a per-sample table: every column but the keys and the targets."""
    return [c for c in columns if c not in PER_SAMPLE_KEYS and c not in PER_SAMPLE_TARGETS]
