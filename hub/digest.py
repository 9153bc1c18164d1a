"""Content hashes of files."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file.

    ``hashlib.file_digest`` reads into one reused 256 KiB buffer. Reading
    1 MiB ``bytes`` blocks instead left up to 2 MiB of freshly written heap
    behind in a process whose allocator had raised its mmap threshold, which
    showed in the peak RSS of loading a 2 MB checkpoint.
    """
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
