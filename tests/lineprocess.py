"""LineProcess: a program under test in a subprocess, its stderr read line by line, each read
bounded in time (the command line, the supervisor, socket activation use it)."""

from __future__ import annotations

import os
import re
import select
import selectors
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["LineProcess", "REPO", "repo_environ"]

REPO = Path(__file__).resolve().parent.parent


def repo_environ(**extra: str) -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH, plus `extra`."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


class LineProcess:
    """`argv` in a subprocess (stdin and stdout closed); `line()` and `wait_for()` read its
    stderr. `env` is the whole environment (default: `repo_environ()`)."""

    def __init__(self, argv: list[str], *, cwd: Path | str | None = None,
                 env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=repo_environ() if env is None else env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=pass_fds)
        assert self.proc.stderr is not None
        self._stderr = self.proc.stderr
        self._buffer = b""
        self.seen: list[str] = []

    def line(self, timeout: float = 10.0) -> str:
        """The next line of stderr ("" at EOF); AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._stderr, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError("no line from the process in time; so far:\n" +
                                         "\n".join(self.seen))
                chunk = os.read(self._stderr.fileno(), 65536)
                if not chunk:
                    if not self._buffer:
                        return ""
                    self._buffer += b"\n"  # the last line had no newline
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        self.seen.append(line.decode(errors="replace"))
        return self.seen[-1]

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Read lines until one matches `pattern` (re.search), within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.0, deadline - time.monotonic()))
            match = re.search(pattern, line)
            if match:
                return match
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"{pattern!r} never appeared; output:\n" +
                                     "\n".join(self.seen))

    def ready_lines(self) -> list[str]:
        """The complete lines available now, without waiting (for a test that interleaves
        reading with its own work)."""
        lines: list[str] = []
        while True:
            if b"\n" in self._buffer:
                lines.append(self.line())
                continue
            ready, _, _ = select.select([self._stderr], [], [], 0)
            if not ready:
                return lines
            chunk = os.read(self._stderr.fileno(), 65536)
            if not chunk:
                if self._buffer:
                    lines.append(self.line())  # the last line had no newline
                return lines
            self._buffer += chunk

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum`; the exit status."""
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=20)

    def rest(self) -> str:
        """Everything left on stderr (call once the process has exited)."""
        return self._buffer.decode(errors="replace") + \
            self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
