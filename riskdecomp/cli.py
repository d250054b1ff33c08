"""The ``riskdecomp`` command: a thin shell over the Python API.

Bad input gives one line ``riskdecomp: error: ...`` naming the culprit and exit status 2 (tracebacks only with
``--debug``). ``evaluate`` exits 1 when some model failed (the others are complete; see ``failures.csv``), ``featurize`` when some
encoder failed (the others' features are written): one line per failed model, its traceback too with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click

from riskdecomp.utils.errors import RiskdecompError, TrainingError, one_line
from riskdecomp.utils.validation import SKLEARN_SEED_MAX


def _csv_list(value, cast=str):
    """``None`` for an absent option; else the tuple of its comma-separated items (possibly empty)."""
    if value is None:
        return None
    try:
        return tuple(cast(v.strip()) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of {cast.__name__}") from None


class NumberList(click.ParamType):
    """A comma-separated list of numbers in a range, checked when the command line is parsed."""

    def __init__(self, cast, low, high=None, what=""):
        self.cast, self.low, self.high, self.what = cast, low, high, what
        self.name = f"{cast.__name__}s"

    def get_metavar(self, param, *args, **kwargs):
        return f"{self.cast.__name__.upper()}[,...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = []
        for v in str(value).split(","):
            if not v.strip():
                continue
            try:
                x = self.cast(v.strip())
            except ValueError:
                self.fail(f"{v.strip()!r} is not {'an integer' if self.cast is int else 'a number'}", param, ctx)
            if x < self.low or (self.high is not None and x > self.high) or (self.cast is float and (x <= self.low or (self.high is not None and x >= self.high))):
                self.fail(f"{v.strip()!r}: {self.what}", param, ctx)
            items.append(x)
        return tuple(items)


class Jobs(click.ParamType):
    """A positive integer or ``auto``."""

    name = "jobs"

    def get_metavar(self, param, *args, **kwargs):
        return "INTEGER|auto"

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            self.fail(f"{value!r}: expected a positive integer or 'auto'", param, ctx)
        return n


SHOTS = NumberList(int, 1, what="a shot count is a number of examples per class >= 1")
FRACTIONS = NumberList(float, 0.0, 1.0, what="a fraction of the train split must be in (0, 1): 1 leaves no examples to choose C on")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="riskdecomp")
def cli(debug, verbose):
    """Evaluate self-supervised encoders and explain why they are good or bad."""
    import os

    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ["RISKDECOMP_LOG_LEVEL"] = str(level)  # worker processes log at the same level


# ------------------------------------------------------------------------------------------------ zoo
@cli.group()
def zoo():
    """Inspect a zoo file."""


@zoo.command("list")
@click.option("--zoo", "zoo_path", required=True, type=click.Path(dir_okay=False), help="Zoo YAML file.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default=None,
              help="Table (default) or CSV of the entries.")
@click.option("--expanded", is_flag=True,
              help="Print the final entries as an explicit zoo YAML (defaults, base, sweep applied; full recipes; "
                   "metadata incl. what the recipes determine).")
def zoo_list(zoo_path, fmt, expanded):
    """List the zoo's entries with their metadata (offline: nothing is downloaded)."""
    from riskdecomp.zoo import format_table, load_zoo

    if expanded:
        if fmt is not None:
            raise RiskdecompError("zoo list: --expanded prints YAML; drop --format")
        import yaml

        click.echo(yaml.safe_dump(load_zoo(zoo_path).expanded(), sort_keys=False, width=120), nl=False)
        return
    df = load_zoo(zoo_path).to_frame()
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    else:
        click.echo(format_table(df))  # fits 120 columns
        click.echo(f"{len(df)} models")


@zoo.command("check")
@click.option("--zoo", "zoo_path", required=True, type=click.Path(dir_okay=False), help="Zoo YAML file.")
def zoo_check(zoo_path):
    """Validate a zoo file without running anything: 'ok: N entries', or the one-line error (exit 2)."""
    from riskdecomp.zoo import load_zoo

    click.echo(f"ok: {len(load_zoo(zoo_path))} entries")


# ------------------------------------------------------------------------------------------------ common options
def _zoo_options(f):
    f = click.option("--zoo", "zoo_path", required=True, type=click.Path(dir_okay=False), help="Zoo YAML file.")(f)
    f = click.option("--dataset", default="cifar10-mini", show_default=True,  # = datasets.DEFAULT_DATASET (tested)
                     help="cifar10-mini (embedded) | digits | imagefolder:PATH | cifar10:PATH")(f)
    f = click.option("--models", default=None,
                     help="Comma-separated subset of model names (their references are added, transitively).")(f)
    f = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Feature/checkpoint cache [default: $RISKDECOMP_CACHE or ~/.cache/riskdecomp].")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps")(f)
    f = click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))(f)
    f = click.option("--num-workers", default="auto", show_default=True, help="Data-loading processes (or auto).")(f)
    f = click.option("--seed", default=0, show_default=True, type=click.IntRange(0, SKLEARN_SEED_MAX),
                     help="Seed of every random choice of the evaluation (scikit-learn takes up to 2**32 - 1).")(f)
    f = click.option("--no-progress", is_flag=True, help="Hide progress bars.")(f)
    f = click.option("--feature-dtype", type=click.Choice(["float16", "float32"]), default="float16",
                     show_default=True,  # = features.FEATURE_DTYPES (tested)
                     help="Precision of the feature cache: float16 halves disk and memory (a matrix with a column "
                          "float16 would flatten, e.g. a large common offset, is cached as float32 anyway); float32 "
                          "for features beyond float16's range (+-65504).")(f)
    return f


def _debug() -> bool:
    """Whether ``--debug`` was given (a failure then also prints its traceback)."""
    return bool(click.get_current_context().find_root().params.get("debug"))


def _workers(v):
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise click.BadParameter(f"--num-workers {v!r}: expected an integer or 'auto'") from None


@cli.command()
@_zoo_options
@click.option("--download", is_flag=True, help="Let torchvision download CIFAR-10 (online users).")
def featurize(zoo_path, dataset, models, cache_dir, device, batch_size, num_workers, seed, no_progress, feature_dtype,
              download):
    """Compute (or reuse) the cached features of every zoo entry on a dataset. Entries that share preprocessing
    are featurized together: each image is decoded once for all of them."""
    from riskdecomp.features.cache import featurize_group
    from riskdecomp.features.datasets import load_dataset
    from riskdecomp.features.encoders import default_cache_dir
    from riskdecomp.runner.pipeline import with_references
    from riskdecomp.sources import source_of
    from riskdecomp.utils.atomic import check_writable_dir
    from riskdecomp.zoo import load_zoo

    cache = check_writable_dir(cache_dir or default_cache_dir(), "--cache-dir")  # before any compute
    z = load_zoo(zoo_path)
    entries = [z[n] for n in with_references(z, _csv_list(models))]
    ds = None
    if any(source_of(e).needs_dataset for e in entries):
        ds = load_dataset(dataset, download=download, seed=seed)
    failures: dict = {}  # an encoder whose forward fails: the others' features are still written
    feats = featurize_group(entries, ds, cache_dir=cache, device=device, batch_size=batch_size,
                            num_workers=_workers(num_workers), progress=not no_progress, dtype=feature_dtype,
                            mmap=True,  # memory-mapped: a large zoo's features are not all held in memory
                            failures=failures)
    for e in entries:
        if e.name in feats:
            f = feats[e.name]
            click.echo(f"{e.name}: train {f.x_train.shape}, test {f.x_test.shape}, "
                       f"{'computed' if f.forward_passes else 'cached'}")
    _report_failures({n: (one_line(exc), "".join(traceback.format_exception(exc))) for n, exc in failures.items()},
                     None)


@cli.command()
@_zoo_options
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--jobs", default="auto", show_default=True, type=Jobs(),
              help="Parallel jobs (joblib processes); auto = one per CPU core (1 on a GPU); capped at the number of "
                   "models.")
@click.option("--threads", default=None, type=click.IntRange(1), help="Threads per job [default: cores / jobs].")
@click.option("--backend", type=click.Choice(["loky", "dask"]), default="loky", show_default=True)
@click.option("--dask-scheduler", default=None, help="Address of a dask.distributed scheduler (implies --backend dask).")
@click.option("--force", is_flag=True, help="Recompute everything (records, features, recipe checkpoints), also "
              "into an --out that holds results of other settings (those are moved to runs/_replaced/<key>/).")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(0), help="Bootstrap resamples for CIs.")
@click.option("--shots", default="1,3,5,10", show_default=True, type=SHOTS, help="Few-shot k per class (>= 1).")
@click.option("--fractions", default="0.01,0.1", show_default=True, type=FRACTIONS,
              help="Few-shot fractions of the train split, each in (0, 1).")
@click.option("--fewshot-seeds", default=5, show_default=True, type=click.IntRange(1))
@click.option("--uncertainty/--no-uncertainty", default=True, show_default=True)
@click.option("--aug-views", default=4, show_default=True, type=click.IntRange(0),
              help="Random views (crop + flip) per test image for augmentation-consistency scores; 0: off.")
@click.option("--active/--no-active", default=True, show_default=True, help="Active-learning curves.")
@click.option("--statistics/--no-statistics", default=True, show_default=True, help="Representation statistics.")
@click.option("--alternative", is_flag=True, help="Also compute the alternative (train+test) decomposition.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write plots and report.html.")
def evaluate(zoo_path, dataset, models, cache_dir, device, batch_size, num_workers, seed, no_progress, feature_dtype,
             out, jobs,
             threads, backend, dask_scheduler, force, n_boot, shots, fractions, fewshot_seeds, uncertainty, aug_views, active,
             statistics, alternative, report):
    """Featurize, decompose the risk of every zoo entry, and write the leaderboard (+ report)."""
    import time

    from riskdecomp.runner.pipeline import evaluate as run
    from riskdecomp.runner.records import Settings
    from riskdecomp.utils.progress import summary_lines

    t0 = time.perf_counter()
    settings = Settings(seed=seed, n_boot=n_boot, shots=shots, fractions=fractions,
                        fewshot_seeds=fewshot_seeds, uncertainty=uncertainty, aug_views=aug_views, active=active,
                        statistics=statistics, feature_dtype=feature_dtype,
                        alternative=alternative, device=device, batch_size=batch_size,
                        num_workers=_workers(num_workers), progress=not no_progress, threads=threads)
    res = run(zoo_path, dataset, out, models=_csv_list(models), cache_dir=cache_dir, settings=settings,
              jobs=jobs,
              backend="dask" if dask_scheduler else backend, scheduler=dask_scheduler, force=force)
    board = res.leaderboard
    if len(board):
        from riskdecomp.utils.schema import OUTCOMES

        cols = [c for c in ("model", "dataset", *OUTCOMES) if c in board]
        click.echo(board[cols].round(2).to_string(index=False))
    report_path = None
    if report and len(board):
        from riskdecomp.report import make_report

        report_path = make_report(out)
    for line in summary_lines(res, report_path, time.perf_counter() - t0, _analysis_summary(res, report_path)):
        click.echo(line)
    # the traceback as the job (maybe a worker process) formatted it, as text
    _report_failures({r["model"]: (r["error"], res.tracebacks.get((r["model"], r["dataset"]), ""))
                      for _, r in res.failures.iterrows()}, Path(out) / "failures.csv")


def _analysis_summary(res, report_path) -> dict | None:
    """What the CLI summary names as best: the report's ``analysis/summary.json`` (make_report ran analyze), or
    with ``--no-report`` the same engine run directly on the leaderboard (nothing written)."""
    import json

    from riskdecomp.analysis import comparisons_and_best

    if not len(res.leaderboard) or "agg_risk" not in res.leaderboard:
        return None
    written = Path(res.out) / "analysis" / "summary.json"
    if report_path is not None and written.is_file():
        return json.loads(written.read_text())
    seeds = res.leaderboard_seeds if len(res.leaderboard_seeds) else None
    _, best, inference = comparisons_and_best(res.leaderboard, seeds, Path(res.out) / "per_sample")
    return {"best": best, "inference": inference}


def _report_failures(failures: dict, listing) -> None:
    """``{model: (one-line error, traceback text)}``: one line per failed model on stderr (its traceback before it
    with ``--debug``), a last line pointing at ``listing`` (a file, or None), then exit status 1. Nothing when no
    model failed."""
    if not failures:
        return
    for name, (error, tb) in failures.items():
        if tb and _debug():
            click.echo(tb.rstrip("\n"), err=True)
        error = error.removeprefix(f"model {name!r}: ")  # the line names the model once
        click.echo(f"riskdecomp: model {name!r} failed: {error}", err=True)
    see = f"; see {listing}" if listing else ""
    click.echo(f"riskdecomp: {len(failures)} model(s) failed{see}", err=True)
    sys.exit(1)


def _focused(name, keep):
    """`riskdecomp uncertainty` / `riskdecomp active`: evaluate with only that per-sample analysis switched on
    (the decomposition's tuned test probe is what both build on, so it always runs)."""

    @cli.command(name, help=f"Run the evaluation with only the {name} analysis (writes the same files as evaluate); "
                            f"on an --out that holds results, add the {name} analysis to them.")
    @_zoo_options
    @click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False))
    @click.option("--jobs", default="auto", show_default=True, type=Jobs())
    @click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(0))
    @click.option("--force", is_flag=True, help="Recompute everything, as evaluate --force.")
    @click.pass_context
    def command(ctx, **kw):
        from riskdecomp.runner.pipeline import folder_settings

        kw.update(uncertainty=False, active=False, statistics=False, report=False)
        # an --out that holds results: their settings, with this analysis switched on (an option given here wins)
        given = {k for k in kw if ctx.get_parameter_source(k) not in (None, click.core.ParameterSource.DEFAULT)}
        options = {p.name for p in evaluate.params}
        kw.update({k: v for k, v in folder_settings(kw["out"]).items() if k in options and k not in given})
        kw[keep] = True
        ctx.invoke(evaluate, **kw)  # click fills in (and converts) evaluate's other defaults

    return command


_focused("uncertainty", "uncertainty")
_focused("active", "active")


@cli.command()
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), help="A recipe YAML file.")
@click.option("--zoo", "zoo_path", type=click.Path(dir_okay=False), help="Take the recipe of a zoo entry...")
@click.option("--model", default=None, help="...named here.")
@click.option("--dataset", default="cifar10-mini", show_default=True)  # = datasets.DEFAULT_DATASET (tested)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint path (.safetensors).")
@click.option("--device", default="auto", show_default=True)
def pretrain(recipe_path, zoo_path, model, dataset, out, device):
    """Pretrain an encoder from a recipe on a dataset's train split; save safetensors + JSON sidecar."""
    from pydantic import ValidationError

    from riskdecomp.pretrain import Recipe, pretrain_to_file
    from riskdecomp.zoo import describe_entry, load_zoo, read_yaml

    if bool(recipe_path) == bool(zoo_path):
        raise RiskdecompError("pretrain: give either --recipe FILE or --zoo FILE --model NAME")
    who = f"recipe {recipe_path}" if recipe_path else f"model {model!r}"
    if recipe_path:
        data = read_yaml(recipe_path)  # as a zoo file: UTF-8 checked, no tags, alias expansion capped
        try:
            recipe = Recipe.model_validate(data.get("recipe", data) if isinstance(data, dict) else data)
        except ValidationError as exc:
            raise RiskdecompError(f"{recipe_path}: invalid recipe: {describe_entry(exc)}") from None
    else:
        if not model:
            raise RiskdecompError("pretrain: --zoo needs --model NAME")
        entry = load_zoo(zoo_path)[model]
        if not isinstance(getattr(entry, "recipe", None), Recipe):
            raise RiskdecompError(f"model {model!r}: source {entry.source!r} has no recipe to pretrain")
        recipe = entry.recipe
    try:
        path = pretrain_to_file(recipe, dataset, out, device=device)
    except TrainingError as exc:  # name what the user wrote: the recipe file or the zoo entry
        raise TrainingError(f"{who}: {exc}") from exc
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--leaderboard", type=click.Path(dir_okay=False, exists=True), default=None, help="Our leaderboard.csv.")
@click.option("--published", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The published all_results.csv (169 models).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
def analyze(leaderboard, published, out):
    """Summaries, ranking stability, the component scaling law, design-choice effects, controlled pairs."""
    from riskdecomp.analysis import analyze as run
    from riskdecomp.analysis import read_leaderboard
    from riskdecomp.analysis.published import load_published
    from riskdecomp.utils.atomic import check_writable_dir

    if not leaderboard and not published:
        raise RiskdecompError("analyze: give --leaderboard and/or --published")
    board = read_leaderboard(leaderboard) if leaderboard else None
    check_writable_dir(out, "--out")
    pub = load_published(published) if published else None
    seeds = Path(leaderboard).with_name("leaderboard_seeds.csv") if leaderboard else None  # per-seed rows
    per_sample = Path(leaderboard).with_name("per_sample") if leaderboard else None  # per-test-point errors
    run(leaderboard=board, published=pub, out_dir=out, seeds=seeds if seeds and seeds.is_file() else None,
        per_sample=per_sample if per_sample and per_sample.is_dir() else None)
    for name in ("summary.json", "design_effects.csv", "controlled_pairs.csv", "comparisons.csv"):
        if (Path(out) / name).is_file():
            click.echo(f"wrote {Path(out) / name}")


@cli.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--published", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Put the published 169-model table next to ours.")
@click.option("--color-by", default="objective", show_default=True, help="Design choice that colors scatter plots.")
def report(results, published, color_by):
    """Plots (PNG + SVG) and a self-contained report.html from a results folder."""
    from riskdecomp.analysis import read_leaderboard
    from riskdecomp.report import make_report

    if (Path(results) / "leaderboard.csv").exists() or not published:  # junk or empty: an error, not an empty report
        read_leaderboard(Path(results) / "leaderboard.csv")
    click.echo(f"wrote {make_report(results, published=published, color_by=color_by)}")


@cli.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, exists=True),
              help="An output folder of evaluate.")
@click.option("--report/--no-report", default=True, show_default=True, help="Also write plots and report.html.")
def build(results, report):
    """Rebuild every summary CSV (and the report) of a results folder from its run records (runs/)."""
    from riskdecomp.runner.pipeline import build as run

    res = run(results)
    for name, path in res.paths.items():
        rows = len(getattr(res, name))
        click.echo(f"wrote {path} ({rows} rows)")
    if report and len(res.leaderboard):
        from riskdecomp.report import make_report

        click.echo(f"wrote {make_report(results)}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    if debug:  # a global flag, accepted after the subcommand too
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    try:
        return cli.main(args=argv, prog_name="riskdecomp", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("riskdecomp: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # a bad option: one line, like every other input error
        if debug:
            raise
        click.echo(f"riskdecomp: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RiskdecompError as exc:
        if debug:
            raise
        click.echo(f"riskdecomp: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
