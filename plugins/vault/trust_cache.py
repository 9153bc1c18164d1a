"""Trusted publishers' public keys, parsed once per trust file version.

``hub.teams.trusted`` reads and parses a team's trust file on every call;
parsing and checking the four public keys costs about 0.1 ms, which a pull of
another team's adapter paid every time. This cache still reads the small file
on every lookup and compares its bytes, so a re-trusted key is never served
stale.
"""

from __future__ import annotations

from pathlib import Path

from hub.identity import PublicIdentity
from hub.teams import trust_file, trusted


class TrustCache:
    """``trusted(home, team)`` with the parsed result kept while the file is unchanged."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self._parsed: dict[str, tuple[bytes, PublicIdentity]] = {}

    def get(self, team: str) -> PublicIdentity:
        """The trusted public identity of ``team``; raises AccessError if it is not trusted."""
        path = trust_file(self.home, team)
        try:
            raw = path.read_bytes()
        except OSError:
            return trusted(self.home, team)  # raises the "not in the trust store" error
        cached = self._parsed.get(team)
        if cached is None or cached[0] != raw:
            cached = self._parsed[team] = (raw, PublicIdentity.from_json(raw))
        return cached[1]
