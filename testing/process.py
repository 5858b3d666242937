"""Running a loopback server as a child process that announces itself with one JSON line.

Used for the local exchange (``python -m btc_quant.testing.exchange``) and the ClickHouse HTTP
endpoint (``python -m btc_quant.testing.clickhouse_http``): both print
``{"url": ..., "port": ...}`` on stdout once listening, so a test can start them on port 0, kill
them with SIGKILL, and start them again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque


class ServerProcess:
    """``ServerProcess("btc_quant.testing.exchange", "--speed", "60").start()`` -> ``.url``."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, startup_timeout_s: float = 60.0):
        self.module = module
        self.args = list(args)
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.stderr_tail: deque[str] = deque(maxlen=50)

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def start(self) -> ServerProcess:
        env = dict(os.environ if self.env is None else self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        line = self._first_line(self.proc)
        try:
            self.info = json.loads(line)
        except ValueError:
            self.kill()
            raise RuntimeError(f"{self.module} did not announce itself (got {line!r}); stderr:\n" + "".join(self.stderr_tail)) from None
        return self

    def _first_line(self, proc: subprocess.Popen) -> str:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout_s)
        return box[0] if box else ""

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.stderr_tail.append(line)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
