"""Logging for entry points: one format, and a filter that masks passwords in every record."""

from __future__ import annotations

import logging

from hpo.store import mask_secrets


class MaskSecretsFilter(logging.Filter):
    """Rewrite each record's message with passwords masked (URL userinfo, password=…)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Send our logs to stderr with masking; quiet the chatty libraries."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    )
    handler.addFilter(MaskSecretsFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("optuna", "urllib3", "filelock", "httpx", "datasets", "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
