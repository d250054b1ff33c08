"""Orchestration on top of the stages: :func:`evaluate` and :func:`build` (:mod:`.pipeline`), one job per
(model, dataset) (:mod:`.jobs`), run keys and records (:mod:`.records`), tables (:mod:`.tables`), parallel
backends (:mod:`.parallel`) and the zoo-wide stages (:mod:`.stages`)."""

from riskdecomp.runner.jobs import EvaluationResult, evaluate_features, run_job  # noqa: F401
from riskdecomp.runner.pipeline import build, evaluate, with_references  # noqa: F401
from riskdecomp.runner.records import Settings, entry_key, run_key  # noqa: F401
