"""Real servers on 127.0.0.1 for the storage and tracking tests: started in their own process group, always ended.

`serve` runs a server command until a URL answers; leaving the `with` block ends the server's whole process group
(mlflow server starts uvicorn and a job runner), then kills what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the server is up
    except OSError:
        return False


@contextlib.contextmanager
def serve(cmd: list[str], ready_url: str, log: Path, timeout: float = 180, env: dict | None = None) -> Iterator[None]:
    """Run `cmd` (a server binding 127.0.0.1) until `ready_url` answers; end it and its children on exit.

    Raises:
        AssertionError: the server exited or did not answer within `timeout` seconds (its log's end included).
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + timeout
        while not _answers(ready_url):
            assert proc.poll() is None, f"{cmd[0]} exited ({proc.returncode}): {log.read_text()[-3000:]}"
            assert time.time() < deadline, f"{cmd[0]} did not answer in {timeout} s: {log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # children that ignored SIGTERM, or a stuck server
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
