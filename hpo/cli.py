"""The ``hpo`` command line. Thin: each command resolves its inputs and calls one function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hpo.errors import HpoError, SpecError
from trainer.errors import TrainerError

if TYPE_CHECKING:
    from hpo.spec.model import StudySpec

app = typer.Typer(
    name="hpo",
    help="Hyperparameter search for transformer fine-tuning on an Optuna study store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Store URL: a journal file path (default .hpo/journal.log), sqlite:///…, "
        "postgresql://…, grpc://host:port. Falls back to $HPO_STORAGE.",
        show_default=False,
    ),
]
SpecArg = Annotated[Path, typer.Argument(help="Study spec (YAML).", show_default=False)]


def _checked_spec(path: Path, *, show_notes: bool = False) -> StudySpec:
    """The spec at ``path`` once it passed its checks, its warnings printed to stderr one per
    line as ``warning: <field>: ...`` (and its notes as ``note: …`` when asked: ``validate``);
    errors raise (one line each, exit 2)."""
    from hpo.local.preflight import inspect_spec_file

    preflight = inspect_spec_file(path)
    if show_notes:
        for note in preflight.notes:
            typer.echo(f"note: {note}", err=True)
    for warning in preflight.warnings:
        typer.echo(f"warning: {warning}", err=True)
    return preflight.spec


def _setup_logging(verbose: bool) -> None:
    from hpo.logs import configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command()
def validate(spec: SpecArg) -> None:
    """Check a study spec and its model and data: prints `ok` (after any warnings), or one
    line per problem and exits 2."""
    _checked_spec(spec, show_notes=True)  # a SpecError: one line per problem, exit code 2
    typer.echo("ok")


@app.command()
def schema() -> None:
    """Print the JSON Schema of study specs (for editors and CI checks)."""
    from hpo.spec.model import StudySpec

    typer.echo(json.dumps(StudySpec.model_json_schema(), indent=2))


@app.command()
def create(spec: SpecArg, storage: StorageOpt = None) -> None:
    """Create the study in the store (idempotent for the same spec)."""
    from hpo.store import mask_url, open_storage, resolve_storage_url
    from hpo.study import set_up_study

    study_spec = _checked_spec(spec)
    url = resolve_storage_url(storage)
    set_up_study(study_spec, open_storage(url))
    typer.echo(f"study {study_spec.name!r} ready in {mask_url(url)}")


@app.command()
def worker(
    study: Annotated[str, typer.Option("--study", help="Study name.", show_default=False)],
    storage: StorageOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, or cuda:N.")] = "auto",
    max_trials: Annotated[
        int | None, typer.Option(help="Stop after this many trials of this worker.")
    ] = None,
    stream: Annotated[
        int | None,
        typer.Option(
            help="Sampler random stream (falls back to $HPO_STREAM). Default: a random one, "
            "distinct across hosts and containers; pass 0, 1, … for repeatable runs.",
            envvar="HPO_STREAM",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    heartbeat_s: Annotated[int, typer.Option(help="Heartbeat interval (s).")] = 10,
    grace_s: Annotated[int, typer.Option(help="Silence after which a trial is stale (s).")] = 30,
) -> None:
    """Run trials of a study until its budget is met (everything else comes from the store)."""
    from hpo.store import resolve_storage_url
    from hpo.worker.loop import WorkerOptions, random_stream, run_worker

    summary = run_worker(
        WorkerOptions(
            storage_url=resolve_storage_url(storage),
            study_name=study,
            device=device,
            max_trials=max_trials,
            stream=stream if stream is not None else random_stream(),
            threads=threads,
            heartbeat_interval_s=heartbeat_s,
            grace_period_s=grace_s,
        )
    )
    typer.echo(
        f"worker done: {summary.completed} complete, {summary.pruned} pruned, "
        f"{summary.failed} failed ({summary.stop_reason})",
        err=True,
    )


@app.command()
def run(
    spec: SpecArg,
    storage: StorageOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="Local worker processes (default: what the machine feeds).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, or cuda.")] = "auto",
    best: Annotated[
        Path | None, typer.Option(help="Where to write the best config.", show_default=False)
    ] = None,
) -> None:
    """Create the study and tune it with local workers, showing a live view."""
    from hpo.local.run import run_study
    from hpo.store import resolve_storage_url

    study_spec = _checked_spec(spec)
    outcome = run_study(
        study_spec, resolve_storage_url(storage), n_workers=workers, device=device, best_path=best
    )
    bad = [code for code in outcome.exit_codes if code != 0]
    if bad and not outcome.interrupted:
        typer.echo(f"error: {len(bad)} worker(s) exited with an error; see .hpo/logs/", err=True)
        raise typer.Exit(1)


def _open_study(name: str, storage: str | None) -> tuple[Any, Any]:
    from hpo.store import open_storage, resolve_storage_url
    from hpo.study import load_study

    return load_study(open_storage(resolve_storage_url(storage)), name)


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="Study name.", show_default=False)],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts by state, best so far, running trials with host / worker / age, compute, ETA."""
    from hpo.views.status import study_status

    info = study_status(*_open_study(study, storage))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    counts = info["counts"]
    typer.echo(
        f"{info['study']}: finished {info['finished']}/{info['budget']} "
        f"(complete {counts['complete']}, pruned {counts['pruned']}), running "
        f"{counts['running']}, waiting {counts['waiting']}, failed {counts['fail']}; "
        f"compute {info['compute_s'] / 60:.1f} min; ETA "
        + (f"{info['eta_s'] / 60:.1f} min" if info["eta_s"] is not None else "-")
    )
    if info["best"]:
        best = info["best"]
        typer.echo(f"best: trial {best['trial']} value {best['value']:.4f} params {best['params']}")
    if info["baselines"]:
        typer.echo(_baselines_line(info["baselines"]))
    for run in info["running"]:
        typer.echo(
            f"running: trial {run['trial']} on {run['host']} ({run['worker']}, {run['device']}), "
            f"{run['age_s']} s, last step {run['last_step']}"
        )


def _baselines_line(summary: dict[str, Any]) -> str:
    """``hpo status``'s baselines line: their scores, the best trial's margins (+ is better),
    and the plain sentence when it does not beat the linear one."""
    best_vs = summary["best_vs"] or {}
    parts = []
    for score in summary["scores"]:
        vs = best_vs.get(score["name"])
        margin = f" (best {vs['margin']:+.4f})" if vs else ""
        parts.append(f"{score['title']} {score['mean']:.4f}{margin}")
    line = "baselines on the same folds: " + "; ".join(parts)
    return line + (f"\n{summary['shortfall']}" if summary["shortfall"] else "")


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name.", show_default=False)],
    storage: StorageOpt = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")] = Path(
        "best.yaml"
    ),
    fmt: Annotated[str, typer.Option("--format", help="yaml or json.")] = "yaml",
    top: Annotated[int, typer.Option(help="Also list the K best trials.", min=1)] = 1,
    by: Annotated[str, typer.Option(help="Rank by CV mean, or lcb = mean - std/sqrt(k).")] = "mean",
) -> None:
    """Write the best config (params, spec, CV stats, provenance; never credentials)."""
    from hpo.views.export import write_export

    if fmt not in ("yaml", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: expected yaml or json")
    if by not in ("mean", "lcb"):
        raise typer.BadParameter(f"--by {by!r}: expected mean or lcb")
    optuna_study, spec = _open_study(study, storage)
    write_export(optuna_study, spec, output, top=top, by=by, fmt=fmt)  # type: ignore[arg-type]
    typer.echo(f"wrote {output}")


@app.command()
def train(
    export_file: Annotated[Path, typer.Argument(help="File written by `hpo export`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model dir to write.")],
    holdout: Annotated[
        float | None, typer.Option(help="Stratified fraction held out for metrics.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, or cuda:N.")] = "auto",
    precision: Annotated[
        str | None,
        typer.Option(help="auto, fp32 or bf16 (default: what the exported trial trained in)."),
    ] = None,
) -> None:
    """Train the production model on all the data with an exported config."""
    from hpo.views.train import train_from_export

    if precision not in (None, "auto", "fp32", "bf16"):
        raise typer.BadParameter(f"--precision {precision!r}: expected auto, fp32 or bf16")
    metrics = train_from_export(
        export_file,
        output,
        holdout=holdout,
        device=device,
        precision=precision,  # type: ignore[arg-type]
    )
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study name.", show_default=False)],
    storage: StorageOpt = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path(
        "report.html"
    ),
) -> None:
    """Write a self-contained HTML report with plots (opens offline)."""
    from hpo.views.report import write_report

    write_report(*_open_study(study, storage), output)
    typer.echo(f"wrote {output}")


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Bind address (localhost unless told).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study store."""
    from hpo.store import mask_url, open_storage, resolve_storage_url

    url = resolve_storage_url(storage)
    store = open_storage(url)
    from optuna_dashboard import run_server

    typer.echo(f"optuna-dashboard for {mask_url(url)} on http://{host}:{port}/", err=True)
    run_server(store, host=host, port=port)


@app.command()
def launch(
    study: Annotated[str, typer.Option("--study", help="Study name.", show_default=False)],
    storage: StorageOpt = None,
    gpus: Annotated[
        str | None, typer.Option(help="'all' or ids like 0,1,3: one worker per GPU.")
    ] = None,
    cpus: Annotated[int | None, typer.Option(help="Run N CPU workers instead.", min=1)] = None,
    per_gpu: Annotated[int, typer.Option(help="Workers per GPU.", min=1)] = 1,
    max_restarts: Annotated[int, typer.Option(help="Restarts per crashed worker.", min=0)] = 3,
) -> None:
    """Run this host's workers for a study: one per GPU, restarted on crashes."""
    from hpo.local.launch import Launcher, build_slots, parse_gpus
    from hpo.store import resolve_storage_url

    if (gpus is None) == (cpus is None):
        raise typer.BadParameter("give exactly one of --gpus or --cpus")
    slots = build_slots(
        study,
        resolve_storage_url(storage),
        gpus=parse_gpus(gpus) if gpus else None,
        cpus=cpus,
        per_gpu=per_gpu,
    )
    raise typer.Exit(Launcher(slots, max_restarts=max_restarts).run())


@app.command()
def proxy(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Bind address (localhost unless told).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 13000,
) -> None:
    """Serve Optuna's gRPC storage proxy in front of the store (workers use grpc://host:port)."""
    from hpo.store import mask_url, open_storage, resolve_storage_url, serve_proxy

    url = resolve_storage_url(storage)
    # The proxy serves every worker through one store: it keeps its one database connection.
    store = open_storage(url, keep_connection=True)
    typer.echo(f"gRPC storage proxy for {mask_url(url)} on {host}:{port}", err=True)
    serve_proxy(store, host=host, port=port)


def main(argv: list[str] | None = None) -> int:
    """Entry point: our errors become one line on stderr and a non-zero exit code."""
    try:
        # With standalone_mode off, click returns the code of a typer.Exit instead of raising.
        result = app(args=argv, standalone_mode=False)
    except SpecError as e:
        for problem in e.problems:
            typer.echo(f"{e.source}: {problem}", err=True)
        return e.exit_code
    except HpoError as e:
        from hpo.store import mask_secrets

        typer.echo(f"error: {mask_secrets(str(e))}", err=True)
        return e.exit_code
    except TrainerError as e:  # the data or the model does not fit (hpo train)
        from hpo.store import mask_secrets

        typer.echo(f"error: {mask_secrets(str(e))}", err=True)
        return 1
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if isinstance(e, _click_errors()):
            e.show()  # type: ignore[attr-defined]
            return int(e.exit_code)  # type: ignore[attr-defined]
        raise
    return result if isinstance(result, int) else 0


def _click_errors() -> tuple[type[Exception], ...]:
    """Usage errors (exit 2, one line on stderr) from click and from the copy of click that
    typer 0.2x ships as ``typer._click``: a ``typer.BadParameter`` is the latter's."""
    import click

    errors: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # a typer that uses click itself
        pass
    else:
        errors.append(ClickException)
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
