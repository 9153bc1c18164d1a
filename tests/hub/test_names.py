"""The one name grammar: full matches only, ASCII only, no traversal, case collisions."""

from __future__ import annotations

import pytest

from hub.errors import ValidationError
from hub.names import check_name, check_team_name, collision_key
from hub.types import AdapterRef

BAD_ADAPTER_NAMES = {
    "trailing-newline": "upper\n",
    "trailing-crlf": "upper\r\n",
    "nul": "up\x00per",
    "dot-dot": "a..b",
    "traversal": "../upper",
    "absolute": "/etc/passwd",
    "windows-absolute": "C:\\upper",
    "slash": "a/b",
    "leading-dot": ".upper",
    "empty": "",
    "too-long": "x" * 65,
    "cyrillic-ie": "upp\u0435r",
    "fullwidth-u": "\uff55pper",
    "zero-width-space": "upper\u200b",
    "combining-accent": "u\u0301pper",
    "not-a-string": 7,
}


@pytest.mark.parametrize("bad", BAD_ADAPTER_NAMES.values(), ids=BAD_ADAPTER_NAMES.keys())
def test_bad_adapter_names_are_refused(bad):
    with pytest.raises(ValidationError, match="adapter name .* is invalid"):
        check_name(bad)


@pytest.mark.parametrize("good", ["upper", "Upper-2.v1_x", "7b", "x" * 64])
def test_good_adapter_names_pass_unchanged(good):
    assert check_name(good) == good


@pytest.mark.parametrize(
    "bad",
    ["alpha\n", "alpha\x00", "Alpha", "al\u0440ha", "1alpha", "a" * 33, "../alpha", ""],
    ids=["newline", "nul", "upper-case", "cyrillic", "digit-first", "too-long", "dots", "empty"],
)
def test_bad_team_names_are_refused(bad):
    with pytest.raises(ValidationError, match="team name .* is invalid"):
        check_team_name(bad)


def test_team_name_check_is_the_identity_modules_check():
    from hub import identity

    assert identity.check_team_name is check_team_name


def test_case_variants_share_a_collision_key():
    assert collision_key("Upper") == collision_key("UPPER") == collision_key("upper")
    assert collision_key("upper") != collision_key("upper2")


def test_reference_with_trailing_newline_in_version_is_malformed():
    with pytest.raises(ValidationError, match="malformed"):
        AdapterRef.parse("upper@3\n")


def test_reference_keeps_a_trailing_newline_in_the_name_for_the_grammar_to_refuse():
    ref = AdapterRef.parse("upper\n")
    with pytest.raises(ValidationError, match="is invalid"):
        check_name(ref.name)


def test_trust_refuses_a_public_file_whose_team_has_a_trailing_newline(tmp_path):
    """`team trust` cannot add a second "alpha" spelled "alpha\\n"."""
    import json

    from hub import teams

    teams.create_team(tmp_path, "alpha", passphrase=None)
    body = json.loads(teams.export_public(tmp_path, "alpha"))
    body["team"] = "alpha\n"
    with pytest.raises(ValidationError, match="team name 'alpha\\\\n' is invalid"):
        teams.trust(tmp_path, json.dumps(body).encode())
    assert sorted(p.name for p in (tmp_path / "trust").iterdir()) == ["alpha.json"]
