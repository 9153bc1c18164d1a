"""What the local backend does beyond the contract: plain files, corruption detected."""

import pytest

from hub.errors import IntegrityError
from hub.testing.storage import sample_adapter
from plugins.local.backend import LocalStore


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "local", team="alpha")


def test_versions_are_plain_peft_directories(store):
    adapter = sample_adapter("upper")
    store.push(adapter)
    d = store.root / "upper" / "1"
    assert (d / "adapter_model.safetensors").read_bytes() == adapter.files[
        "adapter_model.safetensors"
    ]


def test_corrupted_file_is_an_integrity_error(store):
    ref = store.push(sample_adapter("upper"))
    path = store.root / "upper" / "1" / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its recorded SHA-256"):
        store.pull(ref)


def test_no_temp_directories_remain_after_push(store):
    store.push(sample_adapter("upper"))
    assert sorted(p.name for p in (store.root / "upper").iterdir()) == ["1", "name.json"]


def test_record_naming_a_file_outside_the_version_is_refused(store, tmp_path):
    import json

    (tmp_path / "secret").write_bytes(b"not an adapter file")
    ref = store.push(sample_adapter("upper"))
    rec_path = store.root / "upper" / "1" / "record.json"
    rec = json.loads(rec_path.read_text())
    rec["files"]["../../../secret"] = "0" * 64
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(IntegrityError, match="unexpected file '../../../secret'"):
        store.pull(ref)


def test_local_store_only_stores_and_declares_no_capabilities(store):
    bad = sample_adapter("upper")
    bad.files["adapter_model.safetensors"] = b"not safetensors"  # the core refuses this, not us
    assert store.push(bad, team="alpha").version == 1
    assert store.capabilities == frozenset()
