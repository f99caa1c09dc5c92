"""The README's screenshots: `hpo report` and `hpo dashboard` on a study, in headless chromium.

    python -m docs.screenshots --storage .hpo/journal.log --study rotten-tomatoes-demo

Writes ``docs/report.png`` (the report's first screen at 1280 px: history against the
baselines, the baselines table), ``docs/dashboard-history.png`` and
``docs/dashboard-intermediate.png`` (optuna-dashboard's history and intermediate values).
Needs Debian's ``chromium`` and ``chromium-driver`` (see ``tests/hpo/views/browser.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.hpo.conftest import free_port
from tests.hpo.views.browser import chromium, wait_for

DOCS = Path(__file__).resolve().parent


def report_screenshot(storage: str, study: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hpo.cli",
                "report",
                study,
                "--storage",
                storage,
                "-o",
                str(page),
            ],
            check=True,
        )
        with chromium(height_px=1100) as driver:
            driver.get(page.as_uri())
            wait_for(
                lambda: driver.execute_script(
                    "return document.querySelectorAll('.plotly-graph-div svg.main-svg').length"
                ),
                what="the plots",
            )
            time.sleep(1.0)
            driver.save_screenshot(str(out))


def dashboard_screenshots(storage: str, study: str, history: Path, intermediate: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "hpo.cli", "dashboard", "--storage", storage]
    proc = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        wait_for(lambda: _answers(api), timeout_s=60, what="the dashboard")
        with urllib.request.urlopen(api) as response:
            import json

            studies = json.load(response)["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == study)
        with chromium(height_px=1000) as driver:
            driver.get(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}")
            for plot_id, out in (
                ("plot-history", history),
                ("graph-intermediate-values", intermediate),
            ):
                selector = f"#{plot_id} .scatterlayer .trace"
                wait_for(
                    lambda s=selector: driver.execute_script(
                        f"return document.querySelectorAll('{s}').length"
                    ),
                    what=plot_id,
                )
                time.sleep(1.0)
                card = driver.execute_script(
                    f"return document.getElementById('{plot_id}').closest('.MuiCard-root')"
                    f" || document.getElementById('{plot_id}')"
                )
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
                card.screenshot(str(out))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    args = parser.parse_args()
    report_screenshot(args.storage, args.study, DOCS / "report.png")
    dashboard_screenshots(
        args.storage,
        args.study,
        DOCS / "dashboard-history.png",
        DOCS / "dashboard-intermediate.png",
    )


if __name__ == "__main__":
    main()
