"""The signed streaming file format: round trip, tamper and truncation detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.errors import IntegrityError, ValidationError
from hub.fed.fedfile import FedFile, write_fed_file


def test_sections_round_trip_with_signature(tmp_path: Path) -> None:
    path = tmp_path / "x.fedc"
    write_fed_file(path, {"kind": "t"}, [b"one", b"two"], sign=lambda d: {"sig": len(d)})
    with FedFile(path) as ff:
        assert list(ff.sections()) == [b"one", b"two"]
        assert ff.signatures == {"sig": len(ff.signed_bytes())}


def test_altered_section_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "x.fedc"
    write_fed_file(path, {"kind": "t"}, [b"one", b"two"], sign=None)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"two", b"tw0", 1))
    with FedFile(path) as ff, pytest.raises(IntegrityError, match="section 1 does not match"):
        list(ff.sections())


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.fedc"
    write_fed_file(path, {"kind": "t"}, [b"one"], sign=None)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValidationError, match="truncated or not a qlora-hub round file"):
        FedFile(path)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def sections():
        yield b"one"
        raise RuntimeError("encryption failed")

    with pytest.raises(RuntimeError):
        write_fed_file(tmp_path / "x.fedc", {}, sections(), sign=None)
    assert list(tmp_path.iterdir()) == []
