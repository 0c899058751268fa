"""`pqrun dashboard` run as a user runs it: a process of its own on a free port."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_dashboard(dsn: str, *options: str, within: float = 30.0) -> Iterator[str]:
    """Start `pqrun dashboard --dsn DSN --port <free> OPTIONS`; yield its URL; stop it."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as output:
        command = [sys.executable, "-m", "pqrun", "dashboard", "--dsn", dsn, "--port", str(port)]
        process = subprocess.Popen(
            [*command, *options],
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + within
            with httpx.Client() as http:
                while True:
                    if process.poll() is not None:
                        output.seek(0)
                        raise AssertionError(f"pqrun dashboard exited: {output.read()}")
                    try:
                        if http.get(url + "/_/app.css").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(f"pqrun dashboard did not answer within {within} s")
                    time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
