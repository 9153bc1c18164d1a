"""The team, adapters and audit commands, run in process against a real home."""

from __future__ import annotations

import json

import pytest

from hub.cli import main
from hub.testing.storage import sample_adapter


@pytest.fixture
def env(qlora_home, monkeypatch):
    monkeypatch.setenv("QLORA_HUB_PASSPHRASE", "pw for tests")
    monkeypatch.delenv("QLORA_HUB_TEAM", raising=False)
    return qlora_home


def call(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def adapter_dir(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    for name, data in sample_adapter("upper").files.items():
        (d / name).write_bytes(data)
    return d


@pytest.fixture
def two_teams(env, capsys):
    for team in ("alpha", "beta"):  # unprotected keys keep these tests fast (no scrypt)
        assert call(capsys, "team", "create", team, "--no-passphrase")[0] == 0
    return env


def test_team_create_reports_suite_and_fingerprint(env, capsys):
    code, out, _ = call(capsys, "team", "create", "alpha")
    assert code == 0 and out.startswith("created team alpha (hybrid), fingerprint ")


def test_team_create_no_passphrase_warns_loudly(env, capsys):
    code, _, err = call(capsys, "team", "create", "demo", "--no-passphrase")
    assert code == 0 and "WARNING: team demo's private keys are stored UNENCRYPTED" in err


def test_team_create_without_passphrase_source_fails_clearly(env, capsys, monkeypatch):
    monkeypatch.delenv("QLORA_HUB_PASSPHRASE")
    code, _, err = call(capsys, "team", "create", "alpha")
    assert code == 2 and "set QLORA_HUB_PASSPHRASE" in err


def test_export_public_then_trust_in_another_home(env, capsys, tmp_path):
    call(capsys, "team", "create", "alpha")
    pub = tmp_path / "alpha.pub.json"
    assert call(capsys, "team", "export-public", "alpha", "--out", str(pub))[0] == 0
    other = tmp_path / "other"
    code, out, _ = call(capsys, "--home", str(other), "team", "trust", str(pub))
    assert code == 0 and out.startswith("trusted team alpha (hybrid)")
    code, out, _ = call(capsys, "--home", str(other), "team", "list", "--json")
    assert [(r["team"], r["local_keys"]) for r in json.loads(out)] == [("alpha", False)]


def test_push_share_list_pull_as_other_team(two_teams, capsys, adapter_dir):
    code, out, _ = call(
        capsys, "adapters", "push", str(adapter_dir), "--name", "upper", "--team", "alpha"
    )
    assert (code, out.split(" (")[0]) == (0, "pushed upper@1")
    assert call(capsys, "adapters", "share", "upper", "--with", "beta", "--team", "alpha")[0] == 0
    code, out, _ = call(capsys, "adapters", "list", "--team", "beta", "--json")
    assert [(r["ref"], r["readers"]) for r in json.loads(out)] == [("upper@1", ["alpha", "beta"])]
    code, out, _ = call(capsys, "adapters", "pull", "upper@latest", "--team", "beta", "--json")
    info = json.loads(out)
    assert info["ref"] == "upper@1" and info["publisher"] == "alpha"


def test_acting_team_from_environment(two_teams, capsys, adapter_dir, monkeypatch):
    monkeypatch.setenv("QLORA_HUB_TEAM", "beta")
    call(capsys, "adapters", "push", str(adapter_dir), "--name", "mine")
    code, out, _ = call(capsys, "adapters", "list", "--json")
    assert [r["publisher"] for r in json.loads(out)] == ["beta"]


def test_revoke_then_pull_is_refused(two_teams, capsys, adapter_dir):
    call(capsys, "adapters", "push", str(adapter_dir), "--name", "upper", "--team", "alpha",
         "--share-with", "beta")  # fmt: skip
    code, out, _ = call(capsys, "adapters", "revoke", "upper", "--from", "beta", "--team", "alpha")
    assert code == 0 and out.strip() == "revoked beta from upper; re-encrypted as upper@2"
    code, _, err = call(capsys, "adapters", "pull", "upper", "--team", "beta")
    assert (
        code == 2 and err.strip() == "error: team beta's access to upper@2 was revoked by its owner"
    )


def test_wrong_passphrase_is_one_line_error(env, capsys, adapter_dir, monkeypatch):
    call(capsys, "team", "create", "delta")  # protected with $QLORA_HUB_PASSPHRASE
    monkeypatch.setenv("QLORA_HUB_PASSPHRASE", "nope")
    code, _, err = call(
        capsys, "adapters", "push", str(adapter_dir), "--name", "u", "--team", "delta"
    )
    expected = "error: wrong passphrase for team delta's key file (or the file was altered)"
    assert (code, err.strip()) == (2, expected)


def test_import_refuses_pickle_files(two_teams, capsys, adapter_dir):
    (adapter_dir / "adapter_model.bin").write_bytes(b"\x80\x04.")
    code, _, err = call(
        capsys, "adapters", "import", str(adapter_dir), "--name", "x", "--team", "alpha"
    )
    assert code == 2 and "refusing pickle-format file(s) adapter_model.bin" in err


def test_traversal_name_is_refused(two_teams, capsys, adapter_dir):
    code, _, err = call(
        capsys, "adapters", "push", str(adapter_dir), "--name", "../x", "--team", "alpha"
    )
    assert code == 2 and err.startswith("error: adapter name '../x' is invalid")


def test_show_prints_signed_manifest(two_teams, capsys, adapter_dir):
    call(capsys, "adapters", "push", str(adapter_dir), "--name", "upper", "--team", "alpha")
    code, out, _ = call(capsys, "adapters", "show", "upper@1", "--team", "alpha")
    shown = json.loads(out)
    assert shown["manifest"]["publisher"] == "alpha" and shown["readers"] == {"alpha": "active"}


def test_delete_then_verify_and_audit(two_teams, capsys, adapter_dir):
    for _ in range(2):
        call(capsys, "adapters", "push", str(adapter_dir), "--name", "upper", "--team", "alpha")
    assert call(capsys, "adapters", "delete", "upper@1", "--yes", "--team", "alpha")[0] == 0
    code, out, _ = call(capsys, "adapters", "verify", "--team", "alpha")
    assert code == 0 and out.startswith("ok  upper@2")
    code, out, _ = call(capsys, "audit", "verify")  # push, push, delete, and verify's read
    assert code == 0 and out.strip() == "audit log ok: 4 entries, chain intact"


def test_audit_verify_fails_on_edited_log(two_teams, capsys, adapter_dir):
    call(capsys, "adapters", "push", str(adapter_dir), "--name", "upper", "--team", "alpha")
    log = two_teams / "storage" / "vault" / "audit.log"
    log.write_bytes(log.read_bytes().replace(b'"alpha"', b'"gamma"'))
    code, _, err = call(capsys, "audit", "verify")
    assert code == 2 and "entry 1 was edited" in err


def test_export_writes_a_directory_plain_peft_loads(two_teams, capsys, tmp_path, embedded_base):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(embedded_base)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    src = tmp_path / "trained"
    model.save_pretrained(src)
    expected = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    assert (
        call(capsys, "adapters", "import", str(src), "--name", "upper", "--team", "alpha")[0] == 0
    )
    out = tmp_path / "exported"
    assert call(capsys, "adapters", "export", "upper", "--out", str(out), "--team", "alpha")[0] == 0
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_base), out)
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_import_records_the_base_fingerprint_in_the_signed_manifest(two_teams, capsys, adapter_dir):
    fp = "cd" * 32
    code, _, err = call(capsys, "adapters", "import", str(adapter_dir), "--name", "upper",
                        "--team", "alpha", "--base", fp)  # fmt: skip
    assert code == 0, err
    code, out, _ = call(capsys, "adapters", "show", "upper", "--team", "alpha")
    assert json.loads(out)["manifest"]["base_fingerprint"] == fp


def test_pull_json_says_the_vault_verified_a_signature(two_teams, capsys, adapter_dir):
    call(capsys, "adapters", "push", str(adapter_dir), "--name", "upper", "--team", "alpha")
    code, out, _ = call(capsys, "adapters", "pull", "upper", "--team", "alpha")
    assert code == 0 and out.splitlines()[0].endswith("bytes, verified")
