from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opendeploy.agent.hooks import ErrorCode, HookOutcome, ScriptLog, run_hooks
from opendeploy.core.appspec import Hook

RUNAS_USER = "odhooktest"
_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    directory = tmp_path / "deployment-archive"
    (directory / "scripts").mkdir(parents=True)
    return directory


@pytest.fixture
def log(tmp_path: Path) -> Iterator[ScriptLog]:
    with ScriptLog(tmp_path / "logs" / "scripts.log") as script_log:
        yield script_log


def script(archive: Path, name: str, body: str, mode: int = 0o755, shebang: bool = True) -> str:
    path = archive / "scripts" / name
    path.write_text(("#!/bin/sh\n" if shebang else "") + body)
    path.chmod(mode)
    return f"scripts/{name}"


def base_env(event: str = "AfterInstall") -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LIFECYCLE_EVENT": event,
        "DEPLOYMENT_ID": "d-TEST00001",
    }


def run(
    archive: Path,
    log: ScriptLog,
    *hooks: Hook,
    event: str = "AfterInstall",
    kill_grace: float = 0.5,
    pipe_grace: float | None = None,
) -> HookOutcome:
    return run_hooks(
        hooks,
        archive_dir=archive,
        env=base_env(event),
        log=log,
        event=event,
        kill_grace=kill_grace,
        pipe_grace=pipe_grace,
    )


def pgid_from(tail: str) -> int:
    match = re.search(r"\[stdout\]pgid (\d+)", tail)
    assert match, tail
    return int(match.group(1))


@pytest.fixture
def reaper() -> Iterator[None]:
    """Make the test process a child subreaper while a test runs.

    Killed members of a hook's process group stay zombies until someone reaps them; this
    machine's PID 1 never does, so ``killpg(pgid, 0)`` would keep succeeding for dead
    processes. As a subreaper the test process inherits those orphans and ``group_gone`` reaps
    them, as init would; a member still alive keeps the group visible and fails the test.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("cannot become a child subreaper")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def group_gone(pgid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# --- order, environment, logging ----------------------------------------------------------------


def test_scripts_run_in_order_in_the_archive_with_only_the_given_environment(
    archive: Path, log: ScriptLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_KEY", "agent-secret-must-not-leak")
    first = script(archive, "first.sh", "echo first\npwd\nenv\n")
    second = script(archive, "second.sh", "echo second >&2\n")

    outcome = run(archive, log, Hook(first, timeout=5), Hook(second, timeout=5))

    assert outcome.succeeded, outcome
    tail = outcome.log_tail
    assert tail.startswith(f"LifecycleEvent - AfterInstall\nScript - {first}\n[stdout]first\n")
    assert tail.index("[stdout]first") < tail.index(f"Script - {second}") < tail.index("second")
    assert "[stderr]second\n" in tail
    assert f"[stdout]{archive}\n" in tail
    assert "[stdout]LIFECYCLE_EVENT=AfterInstall\n" in tail
    assert "[stdout]DEPLOYMENT_ID=d-TEST00001\n" in tail
    assert "agent-secret-must-not-leak" not in tail
    assert "AWS_SECRET_KEY" not in tail


def test_full_log_on_disk_has_timestamped_prefixed_lines(
    archive: Path, log: ScriptLog, tmp_path: Path
) -> None:
    location = script(archive, "say.sh", "echo out\necho err >&2\n")

    run(archive, log, Hook(location, timeout=5))

    lines = (tmp_path / "logs" / "scripts.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert re.fullmatch(stamp + "LifecycleEvent - AfterInstall", lines[0])
    assert re.fullmatch(stamp + re.escape(f"Script - {location}"), lines[1])
    assert {line[20:] for line in lines[2:]} == {"[stdout]out", "[stderr]err"}
    assert all(re.match(stamp, line) for line in lines)


def test_no_scripts_is_a_success_that_logs_nothing(
    archive: Path, log: ScriptLog, tmp_path: Path
) -> None:
    outcome = run(archive, log)

    assert outcome.succeeded
    assert outcome.diagnostics() == {
        "error_code": 0,
        "script_name": "",
        "message": "Succeeded: ",
        "log": "",
    }
    assert (tmp_path / "logs" / "scripts.log").read_text() == ""


# --- failures and their diagnostics ---------------------------------------------------------------


def test_non_zero_exit_is_code_4_and_stops_the_event(archive: Path, log: ScriptLog) -> None:
    marker = archive / "second-ran"
    failing = script(archive, "fail.sh", "echo about to fail\necho boom >&2\nexit 3\n")
    after = script(archive, "after.sh", f"touch {marker}\n")

    outcome = run(archive, log, Hook(failing, timeout=5), Hook(after, timeout=5))

    assert outcome.error_code == 4
    assert ErrorCode.SCRIPT_FAILED.value == 4
    assert outcome.script_name == failing
    assert outcome.message == f"Script at specified location: {failing} failed with exit code 3"
    assert outcome.log_tail == (
        f"LifecycleEvent - AfterInstall\nScript - {failing}\n[stdout]about to fail\n[stderr]boom\n"
    )
    assert not marker.exists()
    assert outcome.diagnostics() == {
        "error_code": 4,
        "script_name": failing,
        "message": outcome.message,
        "log": outcome.log_tail,
    }


def test_death_by_signal_reports_the_shell_style_exit_code(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "suicide.sh", "kill -9 $$\n")

    outcome = run(archive, log, Hook(location, timeout=5))

    assert outcome.error_code == 4
    assert outcome.message.endswith("failed with exit code 137 (killed by SIGKILL)")


def test_missing_script_is_code_1_with_its_full_path(archive: Path, log: ScriptLog) -> None:
    outcome = run(archive, log, Hook("scripts/missing.sh", timeout=5))

    assert outcome.error_code == 1
    assert ErrorCode.SCRIPT_MISSING.value == 1
    assert outcome.script_name == "scripts/missing.sh"
    assert outcome.message == (
        f"Script does not exist at specified location: {archive}/scripts/missing.sh"
    )
    assert outcome.log_tail == "LifecycleEvent - AfterInstall\n"


def test_a_script_that_is_not_executable_is_chmodded_and_the_log_says_so(
    archive: Path, log: ScriptLog
) -> None:
    location = script(archive, "plain.sh", "echo ran\n", mode=0o644)

    outcome = run(archive, log, Hook(location, timeout=5))

    assert outcome.succeeded, outcome
    assert (archive / location).stat().st_mode & 0o777 == 0o755
    assert "was not executable; ran chmod +x on it" in outcome.log_tail
    assert "[stdout]ran\n" in outcome.log_tail


def test_chmod_failure_is_code_2(
    archive: Path, log: ScriptLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = script(archive, "plain.sh", "echo ran\n", mode=0o644)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    outcome = run(archive, log, Hook(location, timeout=5))

    assert outcome.error_code == 2
    assert ErrorCode.SCRIPT_NOT_EXECUTABLE.value == 2
    assert outcome.message == (
        f"Unable to set script at specified location: {location} as executable"
        " (Operation not permitted)"
    )


def test_a_script_without_a_shebang_runs_with_bin_sh(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "bare.sh", "echo bare ran\n", shebang=False)

    outcome = run(archive, log, Hook(location, timeout=5))

    assert outcome.succeeded, outcome
    assert "[stdout]bare ran\n" in outcome.log_tail


@pytest.mark.parametrize("location", ["../outside.sh", "scripts/../../outside.sh"])
def test_a_location_climbing_out_of_the_archive_is_refused(
    archive: Path, log: ScriptLog, location: str
) -> None:
    marker = archive.parent / "outside-ran"
    outside = archive.parent / "outside.sh"
    outside.write_text(f"#!/bin/sh\ntouch {marker}\n")
    outside.chmod(0o755)

    outcome = run(archive, log, Hook(location, timeout=5))

    assert outcome.error_code == ErrorCode.UNKNOWN_ERROR
    assert "is outside the deployment archive" in outcome.message
    assert not marker.exists()


def test_a_symlinked_script_leading_outside_is_refused(archive: Path, log: ScriptLog) -> None:
    marker = archive.parent / "outside-ran"
    outside = archive.parent / "outside.sh"
    outside.write_text(f"#!/bin/sh\ntouch {marker}\n")
    outside.chmod(0o755)
    (archive / "scripts" / "link.sh").symlink_to(outside)

    outcome = run(archive, log, Hook("scripts/link.sh", timeout=5))

    assert outcome.error_code == ErrorCode.UNKNOWN_ERROR
    assert "symbolic link" in outcome.message
    assert not marker.exists()


# --- timeouts and process groups ------------------------------------------------------------------


@pytest.mark.usefixtures("reaper")
def test_timeout_escalates_to_sigkill_on_the_whole_group(archive: Path, log: ScriptLog) -> None:
    location = script(
        archive,
        "stubborn.sh",
        "trap '' TERM\necho pgid $$\nsleep 30 &\nsleep 30\n",
    )

    started = time.monotonic()
    outcome = run(archive, log, Hook(location, timeout=1), kill_grace=0.5)
    elapsed = time.monotonic() - started

    assert outcome.error_code == 3
    assert ErrorCode.SCRIPT_TIMED_OUT.value == 3
    assert outcome.message == (
        f"Script at specified location: {location} failed to complete in 1 seconds"
    )
    assert 1.4 <= elapsed < 3.0
    assert "outlived SIGTERM; sent SIGKILL" in outcome.log_tail
    assert group_gone(pgid_from(outcome.log_tail))


@pytest.mark.usefixtures("reaper")
def test_a_script_that_obeys_sigterm_is_not_kept_for_the_grace(
    archive: Path, log: ScriptLog
) -> None:
    location = script(archive, "slow.sh", "echo pgid $$\nsleep 30\n")

    started = time.monotonic()
    outcome = run(archive, log, Hook(location, timeout=1), kill_grace=5.0)

    assert outcome.error_code == 3
    assert time.monotonic() - started < 2.5
    assert "SIGKILL" not in outcome.log_tail
    assert group_gone(pgid_from(outcome.log_tail))


@pytest.mark.usefixtures("reaper")
def test_a_background_child_holding_stdout_is_code_6_at_the_deadline(
    archive: Path, log: ScriptLog
) -> None:
    location = script(archive, "bg.sh", "echo pgid $$\nsleep 30 &\necho foreground exits 0\n")

    started = time.monotonic()
    outcome = run(archive, log, Hook(location, timeout=1), kill_grace=0.5)
    elapsed = time.monotonic() - started

    assert outcome.error_code == 6
    assert ErrorCode.OUTPUTS_LEFT_OPEN.value == 6
    assert outcome.message.startswith(
        f"Script at specified location: {location} failed to close STDOUT"
    )
    assert 0.9 <= elapsed < 2.5
    assert "[stdout]foreground exits 0\n" in outcome.log_tail
    assert group_gone(pgid_from(outcome.log_tail))


@pytest.mark.usefixtures("reaper")
def test_pipe_grace_bounds_the_wait_for_a_held_pipe(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "bg.sh", "echo pgid $$\nsleep 30 &\n")

    started = time.monotonic()
    outcome = run(archive, log, Hook(location, timeout=60), pipe_grace=0.3)

    assert outcome.error_code == 6
    assert time.monotonic() - started < 2.0
    assert group_gone(pgid_from(outcome.log_tail))


def test_a_detached_background_job_does_not_delay_success(archive: Path, log: ScriptLog) -> None:
    location = script(
        archive, "daemon.sh", "echo pgid $$\nsleep 30 > /dev/null 2>&1 < /dev/null &\n"
    )

    started = time.monotonic()
    outcome = run(archive, log, Hook(location, timeout=10))
    elapsed = time.monotonic() - started
    os.killpg(pgid_from(outcome.log_tail), 9)

    assert outcome.succeeded, outcome
    assert elapsed < 1.0


# --- the log tail ---------------------------------------------------------------------------------


def test_one_huge_line_is_shortened_instead_of_emptying_the_tail(
    archive: Path, log: ScriptLog, tmp_path: Path
) -> None:
    location = script(
        archive,
        "chatty.sh",
        "echo before\nhead -c 20000 /dev/zero | tr '\\0' x\necho\necho after\nexit 1\n",
    )

    outcome = run(archive, log, Hook(location, timeout=5))

    tail = outcome.log_tail
    assert outcome.error_code == 4
    assert len(tail) <= 4096
    assert f"Script - {location}\n" in tail
    assert "[stdout]before\n" in tail
    assert tail.endswith("[stdout]after\n")
    assert "20008 characters; the whole line is in scripts.log" in tail
    assert "[stdout]" + "x" * 20000 in (tmp_path / "logs" / "scripts.log").read_text()


def test_the_tail_keeps_the_newest_lines(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "many.sh", "seq 1 3000\n")

    outcome = run(archive, log, Hook(location, timeout=5))

    assert 3500 < len(outcome.log_tail) <= 4096
    assert outcome.log_tail.endswith("[stdout]2999\n[stdout]3000\n")
    assert "[stdout]1\n" not in outcome.log_tail


def test_script_log_tail_limit_and_clear(tmp_path: Path) -> None:
    with ScriptLog(tmp_path / "scripts.log", tail_limit=100) as small:
        for number in range(20):
            small.output("stdout", f"line {number}".encode())
        assert len(small.tail) <= 100
        assert small.tail.endswith("[stdout]line 19\n")
        small.clear_tail()
        assert small.tail == ""
    assert len((tmp_path / "scripts.log").read_text().splitlines()) == 20


# --- runas ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def runas_user() -> str:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    try:
        pwd.getpwnam(RUNAS_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            pytest.skip("useradd is not available")
        subprocess.run(
            [useradd, "--create-home", "--shell", "/bin/sh", RUNAS_USER],
            check=True,
            capture_output=True,
        )
    return RUNAS_USER


@pytest.fixture
def shared_archive() -> Iterator[Path]:
    """An archive another user can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="od-hooks-"))
    base.chmod(0o755)
    archive = base / "deployment-archive"
    (archive / "scripts").mkdir(parents=True)
    archive.chmod(0o755)
    (archive / "scripts").chmod(0o755)
    try:
        yield archive
    finally:
        shutil.rmtree(base)


def test_runas_switches_user_groups_and_login_environment(
    runas_user: str, shared_archive: Path, log: ScriptLog
) -> None:
    account = pwd.getpwnam(runas_user)
    location = script(
        shared_archive,
        "who.sh",
        'id -un\nid -G\necho "HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL"\n',
        mode=0o755,
    )

    outcome = run(shared_archive, log, Hook(location, timeout=5, runas=runas_user))

    assert outcome.succeeded, outcome
    printed = [
        line.removeprefix("[stdout]")
        for line in outcome.log_tail.splitlines()
        if line.startswith("[stdout]")
    ]
    assert printed[0] == runas_user
    assert {int(gid) for gid in printed[1].split()} == set(
        os.getgrouplist(runas_user, account.pw_gid)
    )
    assert printed[2] == (
        f"HOME={account.pw_dir} USER={runas_user} LOGNAME={runas_user} SHELL={account.pw_shell}"
    )


def test_runas_failure_names_the_user(
    runas_user: str, shared_archive: Path, log: ScriptLog
) -> None:
    location = script(shared_archive, "fail.sh", "exit 2\n")

    outcome = run(shared_archive, log, Hook(location, timeout=5, runas=runas_user))

    assert outcome.error_code == 4
    assert outcome.message == (
        f"Script at specified location: {location} run as user {runas_user} failed with exit code 2"
    )


def test_runas_another_user_without_root_fails_clearly(
    archive: Path, log: ScriptLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = archive / "ran"
    location = script(archive, "who.sh", f"touch {marker}\n")
    monkeypatch.setattr(os, "geteuid", lambda: 4242)

    outcome = run(archive, log, Hook(location, timeout=5, runas="root"))

    assert outcome.error_code == ErrorCode.UNKNOWN_ERROR
    assert outcome.message.startswith(
        f"Script at specified location: {location} run as user root cannot run:"
    )
    assert "not root" in outcome.message
    assert not marker.exists()


def test_runas_unknown_user_fails_clearly(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "who.sh", "id\n")

    outcome = run(archive, log, Hook(location, timeout=5, runas="no-such-user-xyz"))

    assert outcome.error_code == ErrorCode.UNKNOWN_ERROR
    assert outcome.message.endswith("cannot run: there is no user no-such-user-xyz")


@pytest.mark.usefixtures("reaper")
def test_without_pidfd_support_exits_and_timeouts_are_still_noticed(
    archive: Path, log: ScriptLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", unsupported)
    quick = script(archive, "quick.sh", "echo quick\n")
    slow = script(archive, "slow.sh", "echo pgid $$\nsleep 30\n")

    started = time.monotonic()
    fast = run(archive, log, Hook(quick, timeout=5))
    assert fast.succeeded
    assert time.monotonic() - started < 0.5
    timed_out = run(archive, log, Hook(slow, timeout=1))

    assert timed_out.error_code == 3
    assert time.monotonic() - started < 3.0
    assert group_gone(pgid_from(timed_out.log_tail))
