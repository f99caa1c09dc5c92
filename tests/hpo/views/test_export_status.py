"""Export and status on a study whose trials are written directly (no training needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpo import records
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.study import create_study

REPO = Path(__file__).resolve().parents[3]
DISTS = {
    "lr": FloatDistribution(1e-5, 1e-3, log=True),
    "dropout": FloatDistribution(0.0, 0.3),
    "l1": FloatDistribution(1e-8, 1e-4, log=True),
    "l2": FloatDistribution(1e-6, 1e-2, log=True),
}


def _fill(url: str, spec_dict: dict[str, Any]) -> optuna.Study:
    """Three complete trials (one noisy), one pruned, one failed."""
    storage = open_storage(url)
    create_study(parse_spec(spec_dict), storage)
    study = optuna.load_study(study_name=spec_dict["name"], storage=storage)
    folds = {0: [0.80, 0.82, 0.81], 1: [0.95, 0.60, 0.91], 2: [0.70, 0.72, 0.71]}
    for number, scores in folds.items():
        mean = sum(scores) / 3
        std = (sum((s - mean) ** 2 for s in scores) / 3) ** 0.5
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 1e-4 * (number + 1), "dropout": 0.1, "l1": 1e-7, "l2": 1e-4},
                distributions=DISTS,
                value=mean,
                user_attrs={
                    records.FOLD_SCORES: scores,
                    records.CV_MEAN: mean,
                    records.CV_STD: std,
                    # what auto resolved to on the worker that ran it
                    records.RUN: {
                        "device": "cuda:0",
                        "precision": "bf16" if number == 1 else "fp32",
                    },
                },
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 9e-4, "dropout": 0.2, "l1": 1e-7, "l2": 1e-4},
            distributions=DISTS,
            state=optuna.trial.TrialState.PRUNED,
            intermediate_values={0: 0.5},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 8e-4, "dropout": 0.2, "l1": 1e-7, "l2": 1e-4},
            distributions=DISTS,
            state=optuna.trial.TrialState.FAIL,
        )
    )
    return study


def _hpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", *args], capture_output=True, text=True, cwd=REPO
    )


def test_export_holds_params_spec_stats_and_no_password(
    postgres_url: str, spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    # Trust auth accepts any password, so a URL with one still connects.
    url = postgres_url.replace("postgres@", "postgres:topsecret-pw@")
    _fill(url, spec_dict)
    out = tmp_path / "best.yaml"
    result = _hpo("export", spec_dict["name"], "--storage", url, "-o", str(out), "--top", "2")
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "topsecret-pw" not in text + result.stdout + result.stderr
    doc = yaml.safe_load(text)
    assert doc["trial"] == 1  # the best CV mean (0.82)
    assert doc["precision"] == "bf16"  # what it trained in, not the spec's "auto"
    assert doc["spec"]["train"]["precision"] == "auto"
    assert set(doc["params"]) == {"lr", "dropout", "l1", "l2"}
    assert doc["spec"]["name"] == spec_dict["name"]
    assert doc["cv"]["fold_scores"] == [0.95, 0.60, 0.91]
    assert doc["trials"] == {"complete": 3, "pruned": 1, "fail": 1}
    assert doc["provenance"]["versions"]["optuna"] == optuna.__version__
    assert [t["precision"] for t in doc["top"]] == ["bf16", "fp32"]


def test_export_by_lcb_prefers_the_consistent_trial(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    url = str(tmp_path / "j.log")
    _fill(url, spec_dict)
    out = tmp_path / "best.json"
    by_mean = _hpo(
        "export", spec_dict["name"], "--storage", url, "-o", str(out), "--format", "json"
    )
    assert by_mean.returncode == 0, by_mean.stderr
    assert json.loads(out.read_text())["trial"] == 1  # mean 0.82 with a 0.60 fold
    assert json.loads(out.read_text())["precision"] == "bf16"  # the precision that trial ran in
    by_lcb = _hpo(
        "export",
        spec_dict["name"],
        "--storage",
        url,
        "-o",
        str(out),
        "--format",
        "json",
        "--by",
        "lcb",
    )
    assert by_lcb.returncode == 0, by_lcb.stderr
    assert json.loads(out.read_text())["trial"] == 0  # 0.81 ± 0.008 is the safer pick
    assert json.loads(out.read_text())["precision"] == "fp32"


def test_status_json_counts_equal_the_store(tmp_path: Path, spec_dict: dict[str, Any]) -> None:
    spec_dict["budget"] = {"n_trials": 10}  # room for one more running trial
    url = str(tmp_path / "j.log")
    spec_dict["budget"] = {"n_trials": 6}  # the store hands out no trial beyond the budget
    study = _fill(url, spec_dict)
    study.ask()  # one running
    result = _hpo("status", spec_dict["name"], "--storage", url, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    store = {s.name.lower(): 0 for s in optuna.trial.TrialState}
    for trial in optuna.load_study(study_name=spec_dict["name"], storage=open_storage(url)).trials:
        store[trial.state.name.lower()] += 1
    assert info["counts"] == store
    assert info["finished"] == 4
    assert info["best"]["trial"] == 1
    assert len(info["running"]) == 1


def test_status_of_unknown_study_is_one_line_error(tmp_path: Path) -> None:
    result = _hpo("status", "nope", "--storage", str(tmp_path / "j.log"))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: no study named 'nope' in this store; run `hpo create` first"
    )


@pytest.mark.parametrize(("flag", "value"), [("--format", "xml"), ("--by", "median")])
def test_export_rejects_bad_options(
    flag: str, value: str, tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    """On a study that exists and has a best trial, so only the option can be what is wrong."""
    url = str(tmp_path / "j.log")
    _fill(url, spec_dict)
    out = tmp_path / "best.yaml"
    result = _hpo("export", spec_dict["name"], "--storage", url, "-o", str(out), flag, value)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and value in result.stderr
    assert not out.exists()


def test_report_is_self_contained_with_every_plot(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    import re

    from hpo.views.report import SECTIONS

    url = str(tmp_path / "j.log")
    _fill(url, spec_dict)
    out = tmp_path / "report.html"
    result = _hpo("report", spec_dict["name"], "--storage", url, "-o", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in page
    # Plotly figures (one div each) for the plots; the JS library inlined exactly once.
    assert page.count('class="plotly-graph-div"') >= 6
    assert len(re.findall(r"<script[^>]*\bsrc=", page)) == 0
    assert not re.search(r"<link[^>]+href=\"?https?://", page)
    # (the inlined library mentions a topojson CDN for geo maps; nothing here loads it)
    assert "trial 1" in page or ">1<" in page


def test_status_export_and_report_set_the_best_trial_against_the_baselines(
    tmp_path: Path, spec_dict: dict[str, Any]
) -> None:
    from hpo.baselines import record_baselines

    url = str(tmp_path / "j.log")
    _fill(url, spec_dict)
    stored = record_baselines(open_storage(url), parse_spec(spec_dict))
    assert stored is not None
    tfidf = next(s for s in stored["scores"] if s["name"] == "tfidf_lr")

    status = _hpo("status", spec_dict["name"], "--storage", url, "--json")
    assert status.returncode == 0, status.stderr
    baselines = json.loads(status.stdout)["baselines"]
    assert [s["name"] for s in baselines["scores"]] == ["majority", "tfidf_lr"]
    # the best trial (1: folds 0.95, 0.60, 0.91) against TF-IDF + LR on the same folds
    vs = baselines["best_vs"]["tfidf_lr"]
    assert vs["margin"] == pytest.approx(sum([0.95, 0.60, 0.91]) / 3 - tfidf["mean"])
    assert vs["n_folds"] == 3 and vs["beats"] == (vs["margin"] > 0)
    assert (baselines["shortfall"] is None) == vs["beats"]
    text = _hpo("status", spec_dict["name"], "--storage", url)
    assert f"TF-IDF + logistic regression {tfidf['mean']:.4f} (best {vs['margin']:+.4f})" in (
        text.stdout
    )

    out = tmp_path / "best.json"
    export = _hpo("export", spec_dict["name"], "--storage", url, "-o", str(out), "--format", "json")
    assert export.returncode == 0, export.stderr
    assert json.loads(out.read_text())["baselines"] == baselines

    page = tmp_path / "report.html"
    assert _hpo("report", spec_dict["name"], "--storage", url, "-o", str(page)).returncode == 0
    section = page.read_text().split('<section id="baselines">')[1].split("</section>")[0]
    assert f"<td>TF-IDF + logistic regression</td><td>{tfidf['mean']:.4f}</td>" in section
    assert f"{vs['margin']:+.4f} ({vs['folds_won']}/3 folds)" in section


def test_eta_is_the_mean_finished_duration_times_the_trials_left_over_those_running() -> None:
    """One formula for ``hpo status`` and the live view."""
    import datetime as dt

    from hpo.views.status import eta_s

    start = dt.datetime(2026, 1, 1)

    def trial(state: TrialState, seconds: float | None) -> optuna.trial.FrozenTrial:
        done = None if seconds is None else start + dt.timedelta(seconds=seconds)
        frozen = optuna.trial.create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None
        )
        frozen.datetime_start, frozen.datetime_complete = start, done
        return frozen

    running = [trial(TrialState.RUNNING, None) for _ in range(2)]
    assert eta_s(running, 10) is None  # nothing finished: no estimate
    finished = [
        trial(TrialState.COMPLETE, 10),
        trial(TrialState.PRUNED, 4),
        trial(TrialState.COMPLETE, 16),
    ]
    assert eta_s(finished + running, 10) == 10 * 7 / 2
    assert eta_s(finished, 10) == 10 * 7  # none running: one at a time
    assert eta_s(finished, 3) is None  # the budget is met
