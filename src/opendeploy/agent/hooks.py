"""Running one lifecycle event's scripts, with the stock agent's diagnostics and fewer traps.

Scripts run one after the other; the first failure ends the event. Each script is executed
directly (argv, never a shell string), with stdin from /dev/null, the archive directory as its
working directory, and in its own session, hence its own process group, so everything it starts
can be stopped together. Differences from the stock agent, each fixing a known complaint:

* The environment is exactly the mapping the caller passes: the agent's own environment (and
  the credentials in it) never reaches a hook.
* A script that outlives its ``timeout`` gets SIGTERM on its whole process group, ``kill_grace``
  seconds to finish, then SIGKILL on the group (the stock agent sends only TERM).
* A background process that keeps the script's stdout or stderr open cannot hang the agent:
  after the script exits the agent waits for end-of-file at most until the deadline (or
  ``pipe_grace``), then reports code 6 and stops the group.
* ``runas`` switches user in-process (setgid, initgroups, setuid) instead of ``su user -c``, and
  the script sees that user's HOME, USER, LOGNAME and SHELL, as after a login.
* Script locations must stay inside the archive directory, symbolic links included.
* The tail sent with the diagnostics keeps the newest lines up to ``tail_limit`` characters and
  shortens one overlong line instead of dropping everything (the stock tail empties itself).

The full output goes to the deployment's ``logs/scripts.log`` through ``ScriptLog``.
"""

from __future__ import annotations

import collections
import enum
import errno
import os
import posixpath
import pwd
import selectors
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Literal

from opendeploy.core.appspec import Hook

__all__ = [
    "DEFAULT_TAIL_LIMIT",
    "ErrorCode",
    "HookOutcome",
    "ScriptLog",
    "run_hooks",
]

DEFAULT_TAIL_LIMIT: Final = 4096
_READ_SIZE: Final = 64 * 1024
_MAX_PENDING_LINE: Final = 64 * 1024
_POLL_INTERVAL: Final = 0.02
_DRAIN_AFTER_KILL: Final = 0.2
_DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ErrorCode(enum.IntEnum):
    """The stock agent's diagnostics ``error_code`` values (agent-protocol §1.6)."""

    SUCCEEDED = 0
    SCRIPT_MISSING = 1
    SCRIPT_NOT_EXECUTABLE = 2
    SCRIPT_TIMED_OUT = 3
    SCRIPT_FAILED = 4
    UNKNOWN_ERROR = 5
    OUTPUTS_LEFT_OPEN = 6
    AGENT_RESTARTED = 7


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """How an event's scripts ended. ``script_name`` is the failing script's location."""

    error_code: int
    script_name: str
    message: str
    log_tail: str
    duration: float

    @property
    def succeeded(self) -> bool:
        return self.error_code == ErrorCode.SUCCEEDED

    def diagnostics(self) -> dict[str, object]:
        """The ``Diagnostics`` payload of PutHostCommandComplete, shaped as the stock agent's.

        As there, a success carries no log.
        """
        if self.succeeded:
            return {"error_code": 0, "script_name": "", "message": "Succeeded: ", "log": ""}
        return {
            "error_code": self.error_code,
            "script_name": self.script_name,
            "message": self.message,
            "log": self.log_tail,
        }


class ScriptLog:
    """Appends timestamped lines to a deployment's scripts.log and keeps a bounded tail.

    On disk each line is ``YYYY-MM-DD HH:MM:SS <text>`` (UTC), the stock agent's shape; script
    output is written byte for byte after a ``[stdout]`` or ``[stderr]`` prefix. The tail holds
    the newest lines, decoded, up to ``tail_limit`` characters; a line longer than
    ``line_limit`` (half the tail by default) is shortened in the tail only, so one huge line
    cannot push out everything else. Safe to use from several threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        tail_limit: int = DEFAULT_TAIL_LIMIT,
        line_limit: int | None = None,
    ) -> None:
        if tail_limit < 80:
            raise ValueError(f"tail_limit must be at least 80 characters, not {tail_limit}")
        self.path = path
        self.tail_limit = tail_limit
        self.line_limit = min(line_limit or tail_limit // 2, tail_limit)
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close() / __exit__

    def note(self, text: str) -> None:
        """An agent line such as ``LifecycleEvent - AfterInstall`` or ``Script - run.sh``."""
        self._write(text.encode("utf-8", "replace"), text)

    def output(self, stream: Literal["stdout", "stderr"], line: bytes) -> None:
        """One line (without its newline) that a script wrote to ``stream``."""
        prefix = f"[{stream}]"
        self._write(prefix.encode() + line, prefix + line.decode("utf-8", "replace"))

    @property
    def tail(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def clear_tail(self) -> None:
        """Start a new tail (one per lifecycle event); the file is untouched."""
        with self._lock:
            self._lines.clear()
            self._size = 0

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> ScriptLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, raw: bytes, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S ", time.gmtime()).encode()
        text = text.rstrip("\r")
        if len(text) > self.line_limit:
            marker = f" ...[{len(text)} characters; the whole line is in {self.path.name}]"
            text = text[: max(self.line_limit - len(marker), 0)] + marker
        text += "\n"
        with self._lock:
            self._file.write(stamp + raw + b"\n")
            self._file.flush()
            self._lines.append(text)
            self._size += len(text)
            while self._size > self.tail_limit and len(self._lines) > 1:
                self._size -= len(self._lines.popleft())


def run_hooks(
    hooks: Sequence[Hook],
    *,
    archive_dir: Path,
    env: Mapping[str, str],
    log: ScriptLog,
    event: str,
    kill_grace: float = 5.0,
    pipe_grace: float | None = None,
    on_spawn: Callable[[int], None] | None = None,
) -> HookOutcome:
    """Run ``hooks`` in order from ``archive_dir``; stop at the first failure.

    ``env`` is the scripts' whole environment (the caller adds LIFECYCLE_EVENT, DEPLOYMENT_ID
    and the rest, and PATH). ``kill_grace`` is how long a timed-out script's process group has
    between SIGTERM and SIGKILL. ``pipe_grace`` bounds how long the agent waits, after a script
    exits, for processes it left behind to close its output; None means until the script's
    deadline, as the stock agent does. ``on_spawn`` is told each script's process id (its
    process group's id too) as soon as it starts.
    """
    started = time.monotonic()
    if not hooks:
        return HookOutcome(ErrorCode.SUCCEEDED, "", "Succeeded", "", 0.0)
    log.clear_tail()
    log.note(f"LifecycleEvent - {event}")
    for hook in hooks:
        failure = _Script(hook, archive_dir, env, log, kill_grace, pipe_grace, on_spawn).run()
        if failure is not None:
            return HookOutcome(
                failure.code, hook.location, failure.message, log.tail, time.monotonic() - started
            )
    return HookOutcome(ErrorCode.SUCCEEDED, "", "Succeeded", log.tail, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class _Failure:
    code: ErrorCode
    message: str


class _Script:
    """One script: checks, start, supervision, and the message when it fails."""

    def __init__(
        self,
        hook: Hook,
        archive_dir: Path,
        env: Mapping[str, str],
        log: ScriptLog,
        kill_grace: float,
        pipe_grace: float | None,
        on_spawn: Callable[[int], None] | None = None,
    ) -> None:
        self.hook = hook
        self.on_spawn = on_spawn
        self.archive = os.path.realpath(archive_dir)
        self.env = dict(env)
        self.log = log
        self.kill_grace = kill_grace
        self.pipe_grace = pipe_grace
        where = f"Script at specified location: {hook.location}"
        self.subject = where + (f" run as user {hook.runas}" if hook.runas else "")

    def run(self) -> _Failure | None:
        located = self.locate()
        if isinstance(located, _Failure):
            return located
        problem = self.make_executable(located)
        if problem is not None:
            return problem
        identity = self.identity()
        if isinstance(identity, _Failure):
            return identity
        self.log.note(f"Script - {self.hook.location}")
        started = self.start(located, identity)
        if isinstance(started, _Failure):
            return started
        return self.supervise(started)

    def locate(self) -> str | _Failure:
        """The script's real path, which must be a file inside the archive directory."""
        relative = posixpath.normpath(self.hook.location.replace("\\", "/").lstrip("/"))
        if relative == ".." or relative.startswith("../"):
            return _Failure(
                ErrorCode.UNKNOWN_ERROR,
                f"Script at specified location: {self.hook.location} is outside the deployment"
                f" archive {self.archive}; script locations are relative to the bundle root",
            )
        path = os.path.join(self.archive, relative)
        real = os.path.realpath(path)
        if real != self.archive and not real.startswith(self.archive + os.sep):
            return _Failure(
                ErrorCode.UNKNOWN_ERROR,
                f"Script at specified location: {self.hook.location} is a symbolic link to"
                f" {real}, outside the deployment archive {self.archive}",
            )
        if not os.path.exists(real):
            return _Failure(
                ErrorCode.SCRIPT_MISSING, f"Script does not exist at specified location: {path}"
            )
        if not os.path.isfile(real):
            return _Failure(
                ErrorCode.SCRIPT_MISSING,
                f"Script does not exist at specified location: {path} (it is not a regular file)",
            )
        return real

    def make_executable(self, path: str) -> _Failure | None:
        """``chmod +x`` a script that lacks the bit, as the stock agent does, and say so."""
        mode = os.stat(path).st_mode
        if mode & 0o111:
            return None
        try:
            os.chmod(path, stat.S_IMODE(mode) | 0o111)
        except OSError as exc:
            return _Failure(
                ErrorCode.SCRIPT_NOT_EXECUTABLE,
                f"Unable to set script at specified location: {self.hook.location} as"
                f" executable ({exc.strerror or exc})",
            )
        self.log.note(f"[agent]{self.hook.location} was not executable; ran chmod +x on it")
        return None

    def identity(self) -> pwd.struct_passwd | _Failure | None:
        """The account to switch to for ``runas``, None to stay the agent's own user."""
        name = self.hook.runas
        if name is None:
            return None
        try:
            account = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            return _Failure(
                ErrorCode.UNKNOWN_ERROR, f"{self.subject} cannot run: there is no user {name}"
            )
        euid = os.geteuid()
        if euid != 0 and account.pw_uid != euid:
            return _Failure(
                ErrorCode.UNKNOWN_ERROR,
                f"{self.subject} cannot run: the agent runs as {_user_name(euid)}, not root,"
                " so it cannot switch to another user",
            )
        self.env.update(
            HOME=account.pw_dir,
            USER=account.pw_name,
            LOGNAME=account.pw_name,
            SHELL=account.pw_shell or "/bin/sh",
        )
        self.env.setdefault("PATH", _DEFAULT_PATH)
        return account

    def start(
        self, path: str, account: pwd.struct_passwd | None
    ) -> subprocess.Popen[bytes] | _Failure:
        user = group = None
        groups: list[int] | None = None
        if account is not None and os.geteuid() == 0:
            user, group = account.pw_uid, account.pw_gid
            groups = os.getgrouplist(account.pw_name, account.pw_gid)

        def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                cwd=self.archive,
                start_new_session=True,
                close_fds=True,
                user=user,
                group=group,
                extra_groups=groups,
            )
            if self.on_spawn is not None:
                self.on_spawn(process.pid)
            return process

        try:
            try:
                return spawn([path])
            except OSError as exc:
                if exc.errno != errno.ENOEXEC:
                    raise
            self.log.note(f"[agent]{self.hook.location} has no #! line; running it with /bin/sh")
            return spawn(["/bin/sh", path])
        except OSError as exc:
            return _Failure(
                ErrorCode.UNKNOWN_ERROR,
                f"{self.subject} could not be started: {exc.strerror or exc}",
            )

    def supervise(self, process: subprocess.Popen[bytes]) -> _Failure | None:
        timeout = self.hook.timeout
        watcher = _Watcher(process, self.log)
        try:
            deadline = watcher.started + timeout
            watcher.pump(deadline, watcher.exited)
            if not watcher.exited():
                self.log.note(
                    f"[agent]{self.hook.location} did not finish in {timeout} s; stopping its"
                    " process group"
                )
                watcher.stop_group(self.kill_grace)
                return _Failure(
                    ErrorCode.SCRIPT_TIMED_OUT,
                    f"Script at specified location: {self.hook.location} failed to complete in"
                    f" {timeout} seconds",
                )
            if self.pipe_grace is not None:
                deadline = min(deadline, time.monotonic() + self.pipe_grace)
            watcher.pump(deadline, watcher.drained)
            status = watcher.returncode()
            if not watcher.drained():
                self.log.note(
                    f"[agent]{self.hook.location} exited, but processes it started still hold"
                    " its output open; stopping its process group"
                )
                watcher.stop_group(self.kill_grace)
                if status == 0:
                    return _Failure(
                        ErrorCode.OUTPUTS_LEFT_OPEN,
                        f"Script at specified location: {self.hook.location} failed to close"
                        " STDOUT: it exited with code 0, but a process it started in the"
                        " background kept its stdout or stderr open; redirect that process's"
                        " output (e.g. > /dev/null 2>&1 < /dev/null)",
                    )
        except BaseException:
            watcher.kill_group()
            raise
        finally:
            watcher.close()
        if status != 0:
            return _Failure(
                ErrorCode.SCRIPT_FAILED, f"{self.subject} failed with exit code {_describe(status)}"
            )
        return None


class _Watcher:
    """Reads a running script's output into the log and watches its process group."""

    def __init__(self, process: subprocess.Popen[bytes], log: ScriptLog) -> None:
        self.process = process
        self.pgid = process.pid
        self.started = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, bytearray] = {}
        self.streams: dict[int, Literal["stdout", "stderr"]] = {}
        self.log = log
        pipes: tuple[tuple[IO[bytes] | None, Literal["stdout", "stderr"]], ...] = (
            (process.stdout, "stdout"),
            (process.stderr, "stderr"),
        )
        for pipe, stream in pipes:
            assert pipe is not None
            descriptor = pipe.fileno()
            os.set_blocking(descriptor, False)
            self.streams[descriptor] = stream
            self.pending[descriptor] = bytearray()
            self.selector.register(descriptor, selectors.EVENT_READ)
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        else:
            self.selector.register(self.pidfd, selectors.EVENT_READ)

    def exited(self) -> bool:
        if self.process.poll() is None:
            return False
        self.forget_pidfd()
        return True

    def drained(self) -> bool:
        return not self.pending

    def returncode(self) -> int:
        code = self.process.poll()
        assert code is not None
        return code

    def pump(self, until: float, done: Callable[[], bool], tick: float | None = None) -> None:
        """Copy output to the log until ``done()`` or the monotonic time ``until``."""
        while not done():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            wait = remaining if tick is None else min(remaining, tick)
            if self.pidfd is None and self.process.returncode is None:
                wait = min(wait, _POLL_INTERVAL)
            for key, _ in self.selector.select(wait):
                if key.fd == self.pidfd:
                    self.forget_pidfd()
                else:
                    self.read(key.fd)

    def read(self, descriptor: int) -> None:
        try:
            data = os.read(descriptor, _READ_SIZE)
        except BlockingIOError:
            return
        buffer = self.pending[descriptor]
        stream = self.streams[descriptor]
        if not data:
            if buffer:
                self.log.output(stream, bytes(buffer))
            self.selector.unregister(descriptor)
            del self.pending[descriptor]
            return
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            self.log.output(stream, bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > _MAX_PENDING_LINE:
            self.log.output(stream, bytes(buffer))
            buffer.clear()

    def stop_group(self, grace: float) -> None:
        """SIGTERM the group, wait up to ``grace`` s for it to go, then SIGKILL it."""
        self.signal(signal.SIGTERM)

        def gone() -> bool:
            return self.exited() and not _group_alive(self.pgid)

        self.pump(time.monotonic() + grace, gone, tick=_POLL_INTERVAL)
        if not gone():
            self.log.note(f"[agent]process group {self.pgid} outlived SIGTERM; sent SIGKILL")
            self.kill_group()
        self.pump(time.monotonic() + _DRAIN_AFTER_KILL, self.drained)

    def kill_group(self) -> None:
        self.signal(signal.SIGKILL)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return

    def signal(self, number: signal.Signals) -> None:
        try:
            os.killpg(self.pgid, number)
        except (ProcessLookupError, PermissionError):
            return

    def forget_pidfd(self) -> None:
        if self.pidfd is not None:
            self.selector.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def close(self) -> None:
        for descriptor, buffer in list(self.pending.items()):
            if buffer:
                self.log.output(self.streams[descriptor], bytes(buffer))
        self.forget_pidfd()
        self.selector.close()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs; zombies (dead, unreaped) do not count.

    Reads /proc; where it is missing, falls back to ``killpg(pgid, 0)``, which counts zombies.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    if not entries:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _describe(status: int) -> str:
    if status >= 0:
        return str(status)
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"{128 - status} (killed by {name})"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
