"""What the trainer's tests share: settings that learn the synthetic task, a config, a reporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import make_trainer_config
from trainer import Hyperparams, TrainerConfig

# Settings under which both tiny models learn the synthetic task (checked by the first test).
HP = Hyperparams(lr=5e-3, dropout=0.0, l1=0.0, l2=0.0, epochs=6, batch_size=16, warmup_ratio=0.0)


def config_for(model_dir: Path, csv: Path, tmp_path: Path, **changes: Any) -> TrainerConfig:
    return make_trainer_config(model_dir, csv, tmp_path / "tokens", **changes)


class RecordingReporter:
    def __init__(self, prune_after: int | None = None) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_after is not None and len(self.reports) >= self.prune_after
