"""Server processes the bench starts and stops: by PID, as a process group, always.

Each server runs in its own session (``start_new_session``), so its PID is also the ID of a
process group holding whatever it spawns (mosec's Rust front end and workers, LitServe's
API and inference processes). Stopping sends SIGTERM to that group, waits, then SIGKILL;
:class:`ServerProcess` is a context manager so an exception or Ctrl-C stops it too.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The status of ``GET url`` (``None``: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 (http only)
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def stat_fields(proc_dir: Path) -> list[str]:
    """The fields of ``<proc_dir>/stat`` after the name (a process's or a thread's).

    The name sits in parentheses and may hold spaces and ``)``; the fields after it count
    from 0 at the state (``proc(5)`` field 3), so utime is ``[11]`` and stime ``[12]``.

    Raises:
        OSError: the process or thread is gone.
    """
    return (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds_of(fields: Sequence[str]) -> float:
    """User + system CPU seconds from :func:`stat_fields`."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A server started as its own process group, ready when ``ready_url`` answers 200.

    Args:
        name: for messages.
        command: the command line.
        ready_url: polled until it answers 200.
        log_path: the server's stdout and stderr.
        env: extra environment variables.
        cwd: working directory.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        ready_url: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.ready_url = ready_url
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def start(self, timeout_s: float = 300.0) -> float:
        """Start and wait until ready; the seconds it took.

        Raises:
            RuntimeError: the server exited or did not get ready in time (it is stopped).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = started + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if http_status(self.ready_url) == 200:
                break
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} not ready in {timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.25)
        self.startup_s = time.perf_counter() - started
        return self.startup_s

    @property
    def pid(self) -> int | None:
        """The server's PID (and process group ID)."""
        return None if self.process is None else self.process.pid

    def _group(self) -> list[tuple[Path, list[str]]]:
        """``(/proc/PID, stat fields after the name)`` of every process in the group."""
        if self.process is None or self.process.poll() is not None:
            return []
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = stat_fields(entry)
            except (OSError, IndexError):
                continue
            if len(fields) > 13 and fields[2] == str(self.process.pid):  # [2]: process group
                members.append((entry, fields))
        return members

    def rss_bytes(self) -> int:
        """Resident memory of the whole process group (all its processes), in bytes."""
        total = 0
        for entry, _ in self._group():
            try:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (OSError, ValueError):
                continue
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the live processes of the group."""
        return sum(cpu_seconds_of(fields) for _, fields in self._group())

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the process group, wait, SIGKILL what is left; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        # Children that outlived their parent (multiprocessing workers) go too.
        _signal_group(process.pid, signal.SIGKILL)
        return process.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
