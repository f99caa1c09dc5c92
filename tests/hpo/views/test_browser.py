"""The report and the dashboard as a person sees them: headless chromium at 1280 px."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from selenium.webdriver.common.by import By

from hpo.baselines import record_baselines
from hpo.notes import write_study_notes, write_trial_note
from hpo.spec.model import parse_spec
from hpo.store import open_storage
from hpo.views.report import SECTIONS
from tests.hpo.conftest import free_port
from tests.hpo.views.browser import (
    WIDTH_PX,
    browser_or_skip,
    chromium,
    console_errors,
    horizontal_overflow_px,
    wait_for,
)
from tests.hpo.views.test_analysis import tiny_study

REPO = Path(__file__).resolve().parents[3]
# Sections of the report that hold plots (the others are tables and text).
PLOT_SECTIONS = ("history", "curves", "importances", "parallel", "slices", "cv")

# Per section: plotly divs, those with a drawn svg, and drawn traces in them.
_PLOTS_JS = """
return Array.from(document.querySelectorAll('section')).map(s => [
  s.id,
  s.querySelectorAll('.plotly-graph-div').length,
  Array.from(s.querySelectorAll('.plotly-graph-div')).filter(
    d => d.querySelector('svg.main-svg')).length,
  s.querySelectorAll('.plotly-graph-div .trace, .plotly-graph-div .parcoords').length,
]);
"""


@pytest.fixture
def study_url(tmp_path: Path, spec_dict: dict[str, Any]) -> tuple[str, str]:
    """A study with five searched params (as the demo), complete, pruned and failed trials,
    intermediate values and baselines."""
    browser_or_skip()
    url = str(tmp_path / "journal.log")
    name = tiny_study(url, spec_dict)
    spec = parse_spec(spec_dict)
    storage = open_storage(url)
    record_baselines(storage, spec)
    # What hpo create and the workers write for the dashboard.
    study = optuna.load_study(study_name=name, storage=storage)
    write_study_notes(study, spec)
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        write_trial_note(study, optuna.Trial(study, trial._trial_id), spec)
    return url, name


def test_report_draws_every_plot_and_fits_1280_px_without_console_errors(
    study_url: tuple[str, str], tmp_path: Path
) -> None:
    url, name = study_url
    page = tmp_path / "report.html"
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "report", name, "--storage", url, "-o", str(page)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    with chromium() as driver:
        driver.get(page.as_uri())

        def drawn() -> list[list[Any]] | None:
            sections = driver.execute_script(_PLOTS_JS)
            done = all(divs == svgs for _, divs, svgs, _ in sections)
            return sections if done else None

        sections = {s[0]: s[1:] for s in wait_for(drawn, what="every plot drawn")}
        assert list(sections) == list(SECTIONS)
        for key in PLOT_SECTIONS:
            divs, svgs, traces = sections[key]
            assert divs >= 1 and svgs == divs and traces >= 1, (key, sections[key])
        assert console_errors(driver) == []
        assert horizontal_overflow_px(driver) <= 0, "the report is wider than 1280 px"


def test_dashboard_shows_history_and_intermediate_values_of_a_study(
    study_url: tuple[str, str],
) -> None:
    url, _ = study_url
    port = free_port()
    command = [sys.executable, "-m", "hpo.cli", "dashboard", "--storage", url, "--port", str(port)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "hpo dashboard did not answer within 60 s"
                time.sleep(0.3)
        with chromium() as driver:
            driver.get(f"http://127.0.0.1:{port}/dashboard/studies/0")

            def traces(plot_id: str) -> int:
                return int(
                    driver.execute_script(
                        f"return document.querySelectorAll('#{plot_id} .scatterlayer .trace')"
                        ".length"
                    )
                )

            # History: the objective of the 2 complete trials (and the best-so-far line).
            wait_for(lambda: traces("plot-history") >= 1, what="the history plot")
            # Intermediate values: one line per trial that reported (2 complete, 1 pruned).
            wait_for(lambda: traces("graph-intermediate-values") >= 1, what="intermediate values")
            assert traces("graph-intermediate-values") == 3
            assert console_errors(driver) == []
            assert driver.execute_script("return window.innerWidth") == WIDTH_PX
            # Our words: the metric's name on the history plot, and the study's note page
            # (the objective, the baselines to beat, the resolved spec).
            body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
            assert "cv_accuracy" in body()
            driver.get(f"http://127.0.0.1:{port}/dashboard/studies/0/note")
            wait_for(lambda: "Resolved spec" in body(), what="the study's note")
            assert "TF-IDF + logistic regression" in body()
            # A trial's note: its folds, epoch by epoch.
            driver.get(f"http://127.0.0.1:{port}/dashboard/studies/0/trials")
            wait_for(lambda: "accuracy per fold and epoch" in body(), what="a trial's note")
            assert console_errors(driver) == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)
