"""``hpo launch``: workers for one host, one per GPU (or N on CPU), restarted if they crash.

Each worker's output lines are prefixed with its name; SIGTERM/SIGINT is forwarded to all.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from hpo.errors import HpoError

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = 5.0


@dataclass
class Slot:
    """One worker position: its name, its environment, and how often it was restarted."""

    name: str
    env: dict[str, str]
    args: list[str]
    restarts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    done: bool = False
    exit_codes: list[int] = field(default_factory=list)


def parse_gpus(gpus: str, visible: int | None = None) -> list[str]:
    """``all`` or a comma list like ``0,1,3`` into GPU ids.

    Raises:
        HpoError: the list is malformed, or ``all`` was asked on a host without GPUs.
    """
    if gpus == "all":
        count = visible if visible is not None else cuda_device_count()
        if count == 0:
            raise HpoError("--gpus all: no CUDA device is visible on this host; use --cpus N")
        return [str(i) for i in range(count)]
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise HpoError(f"--gpus {gpus!r}: expected 'all' or a comma list of ids like 0,1,3")
    return ids


def cuda_device_count() -> int:
    """GPUs this process sees (after its own CUDA_VISIBLE_DEVICES); 0 without CUDA or torch."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pinned_devices(gpus: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value that pins a worker to each of ``gpus``.

    ``gpus`` number the GPUs this process sees, as ``cuda:N`` and ``--gpus all`` do. A child's
    CUDA_VISIBLE_DEVICES is read against the physical GPUs, so where this process runs under
    a CUDA_VISIBLE_DEVICES of its own (a Slurm allocation, a container, a user's choice), id
    N is its N-th entry (an index or a UUID), not physical GPU N: another job's.

    Raises:
        HpoError: an id beyond what this process's CUDA_VISIBLE_DEVICES lists.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(gpus)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    pinned = []
    for gpu in gpus:
        if int(gpu) >= len(entries):
            raise HpoError(
                f"--gpus: GPU {gpu} is not visible here: CUDA_VISIBLE_DEVICES={visible!r} "
                f"lists {len(entries)} GPU(s), numbered from 0"
            )
        pinned.append(entries[int(gpu)])
    return pinned


def worker_command(
    study: str, *, device: str, stream: int | None = None, threads: int | None = None
) -> list[str]:
    """A worker's argv. The store URL goes by environment (``HPO_STORAGE``): argv shows in
    process titles. Without ``stream`` the worker draws its own (unique per host and process)."""
    command = [sys.executable, "-m", "hpo.cli", "worker", "--study", study, "--device", device]
    if stream is not None:
        command += ["--stream", str(stream)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


def build_slots(
    study: str,
    storage_url: str,
    *,
    gpus: Sequence[str] | None,
    cpus: int | None,
    per_gpu: int = 1,
    environ: Mapping[str, str] | None = None,
) -> list[Slot]:
    """One slot per (GPU, k) pinned with CUDA_VISIBLE_DEVICES, or ``cpus`` CPU slots.

    ``gpus`` are ids as this process sees them (see :func:`pinned_devices`); ``environ``
    (default ``os.environ``) is what the workers inherit. The store URL reaches workers
    through ``HPO_STORAGE``, never argv (process titles show it).
    """
    from hpo.store import ENV_STORAGE

    environ = os.environ if environ is None else environ
    slots = []
    if gpus:
        for gpu, pinned in zip(gpus, pinned_devices(gpus, environ), strict=True):
            for k in range(per_gpu):
                env = {**environ, ENV_STORAGE: storage_url, "CUDA_VISIBLE_DEVICES": pinned}
                name = f"gpu{gpu}" + (f".{k}" if per_gpu > 1 else "")
                slots.append(Slot(name, env, worker_command(study, device="cuda:0")))
    else:
        n = cpus or 1
        threads = max(1, (os.cpu_count() or 1) // n)
        for k in range(n):
            env = {**environ, ENV_STORAGE: storage_url, "CUDA_VISIBLE_DEVICES": ""}
            command = worker_command(study, device="cpu", threads=threads)
            slots.append(Slot(f"cpu{k}", env, command))
    return slots


def _pump(name: str, stream: IO[bytes], out: IO[str], lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            out.write(f"[{name}] {line}\n")
            out.flush()


class Launcher:
    """Runs the slots until every worker exited cleanly or ran out of restarts."""

    def __init__(self, slots: list[Slot], *, max_restarts: int = 3, out: IO[str] | None = None):
        self.slots = slots
        self.max_restarts = max_restarts
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self._stopping = False

    def _start(self, slot: Slot) -> None:
        slot.proc = subprocess.Popen(
            slot.args,
            env=slot.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert slot.proc.stdout is not None
        threading.Thread(
            target=_pump, args=(slot.name, slot.proc.stdout, self.out, self._lock), daemon=True
        ).start()

    def _forward(self, signum: int, frame: object) -> None:
        if self._stopping:  # second signal: no more waiting
            for slot in self.slots:
                if slot.proc and slot.proc.poll() is None:
                    slot.proc.kill()
            return
        self._stopping = True
        logger.info("forwarding %s to %d worker(s)", signal.Signals(signum).name, len(self.slots))
        for slot in self.slots:
            if slot.proc and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Returns 0 when every worker finished cleanly, else 1."""
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                self._start(slot)
            while not all(slot.done for slot in self.slots):
                time.sleep(0.5)
                for slot in self.slots:
                    self._check(slot)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        failed = [s.name for s in self.slots if s.exit_codes and s.exit_codes[-1] != 0]
        return 1 if failed and not self._stopping else 0

    def _check(self, slot: Slot) -> None:
        if slot.done or slot.proc is None:
            return
        code = slot.proc.poll()
        if code is None:
            return
        slot.exit_codes.append(code)
        if code == 0 or self._stopping:
            slot.done = True
            return
        if slot.restarts >= self.max_restarts:
            logger.error("worker %s exited with %d; no restarts left", slot.name, code)
            slot.done = True
            return
        slot.restarts += 1
        logger.warning(
            "worker %s exited with %d; restart %d/%d in %.0f s",
            slot.name,
            code,
            slot.restarts,
            self.max_restarts,
            RESTART_BACKOFF_S,
        )
        time.sleep(RESTART_BACKOFF_S)
        self._start(slot)
