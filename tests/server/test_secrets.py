"""SecretBox: access-key secrets sealed at rest with a private key file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from opendeploy.server import secrets
from opendeploy.server.secrets import SecretBox, SecretBoxError

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture
def no_umask() -> Iterator[None]:
    """A permissive umask, so only our own code keeps the key file private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
def test_from_file_creates_a_private_key_file(tmp_path: Path, no_umask: None) -> None:
    path = tmp_path / "data" / "secret-box.key"
    box = SecretBox.from_file(path)
    assert path.is_file()
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret-box.key"]  # no temp left
    assert SecretBox.from_key(path.read_text()).open(box.seal(SECRET)) == SECRET


def test_the_key_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "box.key"
    sealed = SecretBox.from_file(path).seal(SECRET)
    content = path.read_text()
    assert SecretBox.from_file(path).open(sealed) == SECRET
    assert path.read_text() == content


def test_an_existing_key_file_is_never_replaced(tmp_path: Path) -> None:
    # What a second server starting at the same moment does: it keeps the first one's key.
    path = tmp_path / "box.key"
    sealed = SecretBox.from_file(path).seal(SECRET)
    secrets._create_key_file(path, SecretBox.generate_key())
    assert SecretBox.from_file(path).open(sealed) == SECRET
    assert [p.name for p in tmp_path.iterdir()] == ["box.key"]


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601])
def test_a_key_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "box.key"
    path.write_text(SecretBox.generate_key() + "\n")
    path.chmod(mode)
    with pytest.raises(SecretBoxError) as caught:
        SecretBox.from_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert "chmod 600" in message
    assert path.read_text().strip() not in message


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "box.key"
    key = SecretBox.generate_key()
    path.write_text(key + "\n")
    path.chmod(mode)
    assert SecretBox.from_file(path).open(SecretBox.from_key(key).seal(SECRET)) == SECRET


def test_a_key_file_with_garbage_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "box.key"
    path.write_text("hunter2-not-a-key\n")
    path.chmod(0o600)
    with pytest.raises(SecretBoxError) as caught:
        SecretBox.from_file(path)
    assert str(path) in str(caught.value)
    assert "not a valid secret-box key" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "box.key").mkdir(mode=0o700)
    with pytest.raises(SecretBoxError, match="not a regular file"):
        SecretBox.from_file(tmp_path / "box.key")


def test_seal_and_open_round_trip() -> None:
    box = SecretBox.from_key(SecretBox.generate_key())
    for plaintext in [SECRET, "", "ünïcödé ✓", "x" * 10_000]:
        sealed = box.seal(plaintext)
        assert sealed.isascii()
        assert box.open(sealed) == plaintext
    assert SECRET not in box.seal(SECRET)
    assert box.seal(SECRET) != box.seal(SECRET)  # random IV: equal secrets do not look equal


def test_replicas_sharing_a_key_open_each_others_secrets(tmp_path: Path) -> None:
    key = SecretBox.generate_key()
    sealed = SecretBox.from_key(key).seal(SECRET)
    assert SecretBox.from_key(f"  {key}\n").open(sealed) == SECRET
    path = tmp_path / "box.key"
    path.write_text(key)
    path.chmod(0o600)
    assert SecretBox.from_file(path).open(sealed) == SECRET


def test_the_wrong_key_is_named_as_the_problem(tmp_path: Path) -> None:
    sealed = SecretBox.from_key(SecretBox.generate_key()).seal(SECRET)
    other = SecretBox.from_file(tmp_path / "box.key")
    with pytest.raises(SecretBoxError) as caught:
        other.open(sealed)
    message = str(caught.value)
    assert "not the one it was sealed with" in message
    assert f"key file {tmp_path / 'box.key'}" in message
    assert SECRET not in message
    assert sealed not in message
    assert (tmp_path / "box.key").read_text().strip() not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("corrupt", ["", "garbage", "gAAAAA", "ünïcödé"])
def test_a_corrupted_sealed_value_is_refused(corrupt: str) -> None:
    box = SecretBox.from_key(SecretBox.generate_key())
    with pytest.raises(SecretBoxError, match="corrupted"):
        box.open(corrupt)


def test_a_tampered_sealed_value_is_refused() -> None:
    box = SecretBox.from_key(SecretBox.generate_key())
    sealed = box.seal(SECRET)
    middle = len(sealed) // 2
    tampered = sealed[:middle] + ("A" if sealed[middle] != "A" else "B") + sealed[middle + 1 :]
    with pytest.raises(SecretBoxError):
        box.open(tampered)


@pytest.mark.parametrize("key", ["", "short", "ü" * 44, "A" * 42 + "=="])
def test_an_invalid_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(SecretBoxError) as caught:
        SecretBox.from_key(key, source="OPENDEPLOY_SECRET_KEY")
    assert "OPENDEPLOY_SECRET_KEY is not a valid secret-box key" in str(caught.value)
    if key:
        assert key not in str(caught.value)


def test_repr_never_shows_the_key(tmp_path: Path) -> None:
    key = SecretBox.generate_key()
    box = SecretBox.from_key(key, source="OPENDEPLOY_SECRET_KEY")
    assert repr(box) == "SecretBox(source='OPENDEPLOY_SECRET_KEY')"
    assert key not in repr(box) and key not in str(box)
    assert not hasattr(box, "__dict__")
    file_box = SecretBox.from_file(tmp_path / "box.key")
    assert repr(file_box) == f"SecretBox(source={'key file ' + str(tmp_path / 'box.key')!r})"
