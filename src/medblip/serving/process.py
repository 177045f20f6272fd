"""``medblip serve`` in a child process, for scripts and tests that talk to a real server.

    with ServerProcess(["--model", "runs/blip-full"]) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused")

The child's output goes to a log file (``server.log_text()``); start-up waits until ``/health``
answers, and fails with the log's tail if the child exits or takes longer than ``startup_timeout``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medblip.errors import MedblipError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Start ``medblip serve ARGS --host HOST --port PORT`` and wait until it answers."""

    def __init__(self, args: Sequence[str], *, host: str = "127.0.0.1", port: int | None = None,
                 env: Mapping[str, str] | None = None, startup_timeout: float = 180.0,
                 log_path: str | Path | None = None, cwd: str | Path | None = None) -> None:
        self.host = host
        self.port = port or free_port("127.0.0.1" if host in ("0.0.0.0", "::") else host)
        self.args = [sys.executable, "-m", "medblip", "serve", *args, "--host", host, "--port", str(self.port)]
        self.env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="medblip-serve-", suffix=".log")[1])
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API's root (``base_url`` of an OpenAI client)."""
        return self.url + "/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def start(self) -> ServerProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MedblipError(f"medblip serve exited with status {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise MedblipError(f"medblip serve did not answer within {self.startup_timeout:.0f} s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
