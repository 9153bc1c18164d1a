"""The one name grammar: adapter names, team names, and when two names collide.

Every backend, command and the server check names here, so there is one rule:

- adapter names: 1-64 ASCII letters, digits, ``.``, ``_``, ``-``, starting with
  a letter or digit, never containing ``..``;
- team names: 1-32 lowercase ASCII letters, digits, ``-``, ``_``, starting
  with a letter.

The whole string must match (``re.fullmatch``): a ``$`` anchor would also
accept a trailing newline, so ``upper\\n`` would pass as a look-alike of
``upper``. ASCII-only rules out NUL, path separators, absolute paths and
Unicode confusables (Cyrillic ``а`` for Latin ``a``, full-width letters,
zero-width spaces, combining accents); :func:`collision_key` catches adapter
names that differ only by case (team names are lowercase, so cannot).

A reference may name the owning team too, ``alpha/upper`` (as model hubs
do): :func:`split_owner` separates it, and the core then serves only a
version whose signed owner is ``alpha``, so a name re-claimed by another
team after its records were deleted is never taken for the original.
"""

from __future__ import annotations

import re

from hub.errors import ValidationError

MAX_NAME = 64
MAX_TEAM = 32
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
TEAM_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}", re.ASCII)


def _shown(name: object) -> str:
    if isinstance(name, str) and len(name) > 80:
        name = name[:80] + "..."
    return repr(name)


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid adapter name, else raise :class:`ValidationError`."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name) or ".." in name:
        raise ValidationError(
            f"adapter name {_shown(name)} is invalid: use 1-{MAX_NAME} ASCII letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, without '..'"
        )
    return name


def check_team_name(name: object) -> str:
    """Return ``name`` if it is a valid team name, else raise :class:`ValidationError`."""
    if not isinstance(name, str) or not TEAM_NAME.fullmatch(name):
        raise ValidationError(
            f"team name {_shown(name)} is invalid: use 1-{MAX_TEAM} lowercase letters, digits, "
            "'-' or '_', starting with a letter"
        )
    return name


def collision_key(name: str) -> str:
    """Key under which two adapter names count as the same (case-insensitive)."""
    return name.casefold()


def split_owner(text: object) -> tuple[str | None, str]:
    """``(owner, name)`` of ``team/name`` (both checked), or ``(None, name)`` without a ``/``."""
    if isinstance(text, str) and "/" in text:
        owner, _, name = text.partition("/")
        return check_team_name(owner), check_name(name)
    return None, check_name(text)
