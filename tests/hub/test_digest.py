"""``hub.digest.sha256_file`` gives the sha256 of the file's bytes, whatever their size."""

from __future__ import annotations

import hashlib
import os

import pytest

from hub.digest import sha256_file


@pytest.mark.parametrize("size", [0, 1, 2**18 - 1, 2**18, 2**20 * 3 + 7])
def test_sha256_file_matches_hashlib_over_the_bytes(tmp_path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_a_missing_file_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "absent")
