"""riskdecomp: evaluate self-supervised encoders and explain why they are good or bad.

The public API (imported lazily, so ``riskdecomp --help`` stays fast)::

    evaluate, Settings          the whole pipeline (riskdecomp.runner)
    build                       rebuild a results folder's summaries from its run records (riskdecomp.runner)
    load_zoo                    the zoo registry (riskdecomp.zoo)
    load_dataset                datasets (riskdecomp.features.datasets)
    featurize                   cached features (riskdecomp.features.cache)
    LinearProbe, tune_probe     the probe (riskdecomp.estimators.probe)
    decompose                   the four risk components (riskdecomp.estimators.decomposition)
    fewshot_errors              few-shot errors (riskdecomp.estimators.fewshot)
    make_report                 plots + HTML (riskdecomp.report)
"""

import importlib

__version__ = "0.1.0"

_API = {
    "evaluate": "runner", "Settings": "runner", "build": "runner", "load_zoo": "zoo",
    "load_dataset": "features.datasets", "featurize": "features.cache", "LinearProbe": "estimators.probe",
    "tune_probe": "estimators.selection", "decompose": "estimators.decomposition", "fewshot_errors": "estimators.fewshot",
    "make_report": "report", "RiskdecompError": "utils.errors",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'riskdecomp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
