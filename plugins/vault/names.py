"""Adapter names: what a name may be, and when two names collide.

Names never become file paths in the vault (objects live under random ids),
but the local backend, exports and the server's URLs use them, so the rule
is strict: 1-64 ASCII letters, digits, ``.``, ``_``, ``-``, starting with a
letter or digit, no ``..``. ASCII-only rules out Unicode confusables
(Cyrillic ``а`` for Latin ``a``); :func:`collision_key` catches names that
differ only by case.
"""

from __future__ import annotations

import re

from hub.errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_NAME = 64


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid adapter name, else raise ValidationError."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:80] + "..."
        raise ValidationError(
            f"adapter name {shown!r} is invalid: use 1-{MAX_NAME} ASCII letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, without '..'"
        )
    return name


def collision_key(name: str) -> str:
    """Key under which two names count as the same (case-insensitive)."""
    return name.casefold()
