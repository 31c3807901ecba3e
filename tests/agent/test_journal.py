"""The in-flight command journal: written before a command runs, reported after a restart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from opendeploy.agent.journal import RESTART_DIAGNOSTICS, Journal, recover


def _calls() -> tuple[list[tuple[str, str, dict[str, Any]]], Any]:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def complete(command_id: str, status: str, diagnostics: dict[str, Any]) -> bool:
        calls.append((command_id, status, diagnostics))
        return True

    return calls, complete


def test_begin_writes_the_stock_path_and_clear_removes_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    entry = journal.begin("d-111", "hc-1", "AfterInstall")
    path = tmp_path / "ongoing-deployment" / "d-111"
    assert json.loads(path.read_text())["HostCommandIdentifier"] == "hc-1"
    assert [e.host_command_id for e in journal.entries()] == ["hc-1"]
    journal.clear(entry)
    assert not path.exists()
    assert journal.entries() == []
    journal.clear(entry)  # idempotent


def test_an_interrupted_command_is_reported_as_code_7_and_removed(tmp_path: Path) -> None:
    Journal(tmp_path).begin("d-222", "hc-2", "ApplicationStart")
    calls, complete = _calls()
    pending = recover(Journal(tmp_path), complete)
    assert pending == []
    assert calls == [("hc-2", "Failed", dict(RESTART_DIAGNOSTICS))]
    assert calls[0][2] == {
        "error_code": 7,
        "script_name": "",
        "message": "Failed: Failing in-progress lifecycle event after an agent restart.",
        "log": "",
    }
    assert Journal(tmp_path).entries() == []


def test_a_recorded_result_is_resent_instead_of_code_7(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    entry = journal.begin("d-333", "hc-3", "Install")
    success = {"error_code": 0, "script_name": "", "message": "Succeeded: ", "log": ""}
    journal.finish(entry, "Succeeded", success)
    calls, complete = _calls()
    recover(Journal(tmp_path), complete)
    assert calls == [("hc-3", "Succeeded", success)]


def test_an_entry_whose_completion_did_not_get_through_is_kept(tmp_path: Path) -> None:
    Journal(tmp_path).begin("d-444", "hc-4", "AfterInstall")
    pending = recover(Journal(tmp_path), lambda *_: False)
    assert [entry.host_command_id for entry in pending] == ["hc-4"]
    assert (tmp_path / "ongoing-deployment" / "d-444").exists()


def test_the_stock_agents_plain_file_is_understood(tmp_path: Path) -> None:
    directory = tmp_path / "ongoing-deployment"
    directory.mkdir()
    (directory / "d-STOCK0001").write_text("WyJjb20uYW1hem9uIl0=")
    calls, complete = _calls()
    recover(Journal(tmp_path), complete)
    assert calls == [("WyJjb20uYW1hem9uIl0=", "Failed", dict(RESTART_DIAGNOSTICS))]
    assert list(directory.iterdir()) == []


def test_every_entry_is_reported_oldest_first(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.begin("d-bbb", "hc-new", "AfterInstall")
    journal.begin("d-aaa", "hc-old", "ApplicationStop")
    old = tmp_path / "ongoing-deployment" / "d-aaa"
    document = json.loads(old.read_text())
    document["StartedAt"] = 1.0
    old.write_text(json.dumps(document))
    calls, complete = _calls()
    recover(journal, complete)
    assert [call[0] for call in calls] == ["hc-old", "hc-new"]


def test_junk_in_the_directory_is_skipped_and_temporary_files_removed(tmp_path: Path) -> None:
    directory = tmp_path / "ongoing-deployment"
    directory.mkdir()
    (directory / ".d-1.123.tmp").write_text("half")
    (directory / "d-empty").write_text("")
    (directory / "d-nocommand").write_text(json.dumps({"CommandName": "Install"}))
    (directory / "bad name!").write_text("hc")
    assert Journal(tmp_path).entries() == []
    assert not (directory / ".d-1.123.tmp").exists()


def test_writes_are_atomic_replacements(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    entry = journal.begin("d-555", "hc-5", "BeforeInstall")
    path = tmp_path / "ongoing-deployment" / "d-555"
    inode = os.stat(path).st_ino
    journal.finish(entry, "Failed", {"error_code": 4})
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one
    assert [p.name for p in path.parent.iterdir()] == ["d-555"]


def test_the_hook_note_is_not_flushed_to_disk(tmp_path: Path, monkeypatch: Any) -> None:
    """The start and the outcome are fsynced (after a crash of the machine they are what the
    restarted agent reports); the running hook's process group is not (the hook died with
    the machine), so noting it costs a hook no disk flush."""
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    journal = Journal(tmp_path)
    entry = journal.begin("d-556", "hc-6", "AfterInstall")
    assert len(synced) == 1
    entry = journal.note_hook(entry, os.getpid())
    assert entry.hook_group is not None
    assert len(synced) == 1
    journal.finish(entry, "Succeeded", {"error_code": 0})
    assert len(synced) == 2
    (found,) = Journal(tmp_path).entries()
    assert found.result is not None and found.result.status == "Succeeded"
