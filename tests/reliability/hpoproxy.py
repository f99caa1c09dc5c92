"""``hpo proxy`` (Optuna's gRPC storage proxy in front of our store) as a subprocess on a fixed
port, which the fault harness crashes and restarts.

A restart is a crash: SIGKILL, so the process gets no chance to finish a reply or release
anything; the store behind it (a journal file) keeps what it had written. The new process
listens on the same port, so clients (behind a ``FaultProxy``) reconnect to it unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.hpo.conftest import free_port

log = logging.getLogger(__name__)

_READY_POLL_S = 0.1


class HpoProxyProcess:
    """``python -m hpo.cli proxy --storage STORAGE --port PORT`` in its own session.

    Args:
        storage: the store the proxy serves (a journal file path, say).
        port: the port it listens on, kept across restarts; None picks a free one.
        log_path: where its output is appended (every incarnation's); None discards it.
        cwd: its working directory.
        env: its environment (``PYTHONPATH`` must reach ``hpo``); None inherits ours.
        ready_timeout_s: how long a start may take until the port accepts connections.
    """

    def __init__(
        self,
        storage: str,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        if ready_timeout_s <= 0:
            raise ValueError(f"ready_timeout_s must be > 0, got {ready_timeout_s!r}")
        self.storage = storage
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self._log_path = log_path
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        self._ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[Any] | None = None
        self._lock = threading.Lock()  # one start, restart or close at a time
        self.n_restarts = 0

    @property
    def pid(self) -> int | None:
        """The running incarnation's pid (None while down)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> HpoProxyProcess:
        """Start the proxy and return once its port accepts connections.

        Raises:
            RuntimeError: it exited first, or did not listen within ``ready_timeout_s``.
        """
        with self._lock:
            self._start()
        return self

    def restart(self, down_s: float) -> None:
        """Crash the proxy (SIGKILL), stay down ``down_s`` seconds, start it again on the same
        port and return once it listens (the FaultRunner's restart callback)."""
        if down_s < 0:
            raise ValueError(f"down_s must be >= 0, got {down_s!r}")
        with self._lock:
            self._kill()
            log.info("hpo proxy on port %d killed; down for %.1f s", self.port, down_s)
            time.sleep(down_s)
            self._start()
            self.n_restarts += 1

    def close(self) -> None:
        """Stop the proxy (SIGKILL: nothing of it needs to survive a test)."""
        with self._lock:
            self._kill()

    def __enter__(self) -> HpoProxyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "hpo.cli",
            "proxy",
            "--storage",
            self.storage,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        with contextlib.ExitStack() as stack:
            out: Any = subprocess.DEVNULL
            if self._log_path is not None:
                out = stack.enter_context(self._log_path.open("ab"))
            self._proc = subprocess.Popen(
                command,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the test's Ctrl-C is not its
            )
        self._wait_listening(self._proc)
        log.info("hpo proxy pid %d listening on port %d", self._proc.pid, self.port)

    def _wait_listening(self, proc: subprocess.Popen[Any]) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hpo proxy exited {proc.returncode} before listening")
            try:
                socket.create_connection((self.host, self.port), timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self._kill()
                    raise RuntimeError(
                        f"hpo proxy did not listen on port {self.port} within "
                        f"{self._ready_timeout_s:.0f} s"
                    ) from None
                time.sleep(_READY_POLL_S)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
