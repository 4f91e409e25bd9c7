"""Start a simulator process and wait until it is healthy: for tests, benchmarks and the demo.

Standard library only, like the rest of the package.

    with SimProcess(["sglang", "--model-path", "Llama-3.1-8B"], env={"AUTOTUNE_SIM_TIME_SCALE": "5"}) as sim:
        sim.url  # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SimProcess:
    """One simulator process in its own process group, its log in a temporary file."""

    def __init__(
        self,
        engine_args: list[str],
        *,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        module: str = "autotune.simulator",
        cwd: str | None = None,
        python: str = sys.executable,
    ):
        self.engine_args = list(engine_args)
        self.env = dict(os.environ, **(env or {}))
        self.host = host
        self.port = port or free_port(host)
        self.module = module
        self.cwd = cwd
        self.python = python
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - open for the process's lifetime

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimProcess:
        cmd = [self.python, "-m", self.module, *self.engine_args, "--host", self.host, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def health(self) -> int | None:
        """HTTP status of GET /health, None when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def wait_ready(self, timeout: float = 60.0) -> SimProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health() == 200:
                return self
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the simulator exited with status {self.proc.returncode}:\n{self.log()[-2000:]}")
            time.sleep(0.03)
        raise TimeoutError(f"the simulator was not healthy within {timeout} s:\n{self.log()[-2000:]}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM the process group (SIGKILL after 5 s). The log stays readable until close()."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> SimProcess:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
