"""User-facing errors.

Every problem caused by the user's input (zoo file, dataset, weights, cache) raises a
:class:`RiskdecompError` whose message is one line naming the culprit. The CLI prints
that line and exits with code 2; tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

from contextlib import contextmanager


class RiskdecompError(Exception):
    """Bad user input: one line that names the culprit (file, entry, field...)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


def one_line(exc: BaseException) -> str:
    """An exception as the one line a failure report prints: a RiskdecompError's message (it names the culprit);
    anything else as ``Type: first line of its message``."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    return msg if isinstance(exc, RiskdecompError) or not text else f"{type(exc).__name__}: {msg}"


class TrainingError(RiskdecompError):
    """Pretraining diverged (the loss became NaN or inf): the recipe's settings (learning rate...) must change."""


class ZooError(RiskdecompError):
    """The zoo file or one of its entries is invalid."""


class DatasetError(RiskdecompError):
    """The dataset spec or its files are invalid."""


class WeightsError(RiskdecompError):
    """A weights / checkpoint file is missing, unsafe or does not fit its architecture."""


class CacheError(RiskdecompError):
    """A cache file is unusable (it is recomputed where possible)."""


class FeatureError(RiskdecompError):
    """Features are unusable (NaN/inf, wrong shapes, classes missing...)."""


class OutputError(RiskdecompError):
    """An output or cache location cannot be written (read-only, under a file, a filesystem root, disk full...)."""


@contextmanager
def failing_stage(text: str):
    """Label an exception raised inside with the stage it failed in (nested stages join outermost first:
    ``decomposition: held-out probe fit (fold 2 of 5)``); :func:`stage_of` reads the label back."""
    try:
        yield
    except Exception as exc:
        inner = getattr(exc, "riskdecomp_stage", None)
        try:
            exc.riskdecomp_stage = text if inner is None else f"{text}: {inner}"
        except AttributeError:  # pragma: no cover - an exception type without attributes
            pass
        raise


def stage_of(exc: BaseException) -> str | None:
    """The stage :func:`failing_stage` recorded on ``exc`` (None when it failed outside every labelled stage)."""
    return getattr(exc, "riskdecomp_stage", None)
