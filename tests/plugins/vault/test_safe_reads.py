"""Files are read safely: no symlink is followed on import or in the blob store; header
lengths are checked against the blob's real size before anything is allocated."""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest

from hub.adapter_dirs import read_adapter_dir
from hub.errors import IntegrityError, ValidationError
from hub.testing.storage import sample_adapter
from hub.types import AdapterPayload, AdapterRef
from plugins.vault import objects


@pytest.fixture
def adapter_dir(tmp_path):
    """A plain PEFT directory holding sample adapter ``upper``."""
    d = tmp_path / "adapter"
    d.mkdir()
    for name, data in sample_adapter("upper").files.items():
        (d / name).write_bytes(data)
    return d


def test_symlinked_metadata_pointing_at_a_key_file_is_refused_on_import(home, adapter_dir, vault):
    key_file = home / "teams" / "alpha" / "key.json"
    (adapter_dir / "training_metadata.json").symlink_to(key_file)
    with pytest.raises(ValidationError, match="training_metadata.json.*symlink"):
        read_adapter_dir(adapter_dir, "upper")
    assert vault.list() == []


@pytest.mark.parametrize("fname", [AdapterPayload.CONFIG, AdapterPayload.WEIGHTS])
def test_symlinked_adapter_file_is_refused_on_import(tmp_path, adapter_dir, fname):
    outside = tmp_path / "outside"
    outside.write_bytes((adapter_dir / fname).read_bytes())
    (adapter_dir / fname).unlink()
    (adapter_dir / fname).symlink_to(outside)
    with pytest.raises(ValidationError, match="symlink"):
        read_adapter_dir(adapter_dir, "upper")
    with pytest.raises(ValidationError, match="symlink"):
        AdapterPayload.from_dir(adapter_dir, "upper")


def test_adapter_file_that_is_a_fifo_is_refused(adapter_dir):
    (adapter_dir / AdapterPayload.WEIGHTS).unlink()
    os.mkfifo(adapter_dir / AdapterPayload.WEIGHTS)
    with pytest.raises(ValidationError, match="not a regular file"):
        read_adapter_dir(adapter_dir, "upper")


def _oid(vault, version=1):
    with vault.index.read() as db:
        return vault.index.version_row(db, "upper", version)["object_id"]


def _object_dir(vault, version=1):
    return vault.blobs.root / "objects" / _oid(vault, version)


def test_delete_through_a_symlinked_object_folder_erases_nothing_outside(tmp_path, vault):
    ref = vault.push(sample_adapter("upper"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "payload").write_bytes(b"precious")
    (victim / "keys").mkdir()
    (victim / "keys" / "alpha").write_bytes(b"precious too")
    folder = _object_dir(vault)
    for p in sorted(folder.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    folder.rmdir()
    folder.symlink_to(victim, target_is_directory=True)  # the vault writer's swap
    with pytest.raises(IntegrityError, match="symbolic link") as info:
        vault.delete(ref)
    assert "\n" not in str(info.value)
    assert (victim / "payload").read_bytes() == b"precious"
    assert (victim / "keys" / "alpha").read_bytes() == b"precious too"


def test_symlinked_blob_file_is_refused_not_read(tmp_path, vault):
    ref = vault.push(sample_adapter("upper"))
    payload = _object_dir(vault) / "payload"
    copy = tmp_path / "payload-copy"
    copy.write_bytes(payload.read_bytes())  # identical bytes: only the link is wrong
    payload.unlink()
    payload.symlink_to(copy)
    with pytest.raises(IntegrityError, match="symbolic link"):
        vault.pull(ref)


def test_blob_that_is_a_fifo_is_refused_without_hanging(vault):
    ref = vault.push(sample_adapter("upper"))
    payload = _object_dir(vault) / "payload"
    payload.unlink()
    os.mkfifo(payload)
    with pytest.raises(IntegrityError, match="non-regular file"):
        vault.pull(ref)


def test_symlinked_records_folder_is_refused(tmp_path, vault):
    vault.push(sample_adapter("upper"))
    names = vault.blobs.root / "names"
    names.rename(tmp_path / "names-elsewhere")
    names.symlink_to(tmp_path / "names-elsewhere", target_is_directory=True)
    with pytest.raises(IntegrityError, match="symbolic link"):
        vault.pull(AdapterRef("upper"))


def test_put_never_writes_through_a_symlinked_folder(tmp_path, vault):
    outside = tmp_path / "outside"
    outside.mkdir()
    (vault.blobs.root / "objects").mkdir(exist_ok=True)
    (vault.blobs.root / "objects" / "abc").symlink_to(outside, target_is_directory=True)
    with pytest.raises(IntegrityError, match="symbolic link"):
        vault.blobs.put("objects/abc/payload", b"x")
    assert list(outside.iterdir()) == []


# -- header lengths ------------------------------------------------------------------
def _rewrite_header(vault, **changes):
    key = f"objects/{_oid(vault)}/payload"
    blob = bytearray(vault.blobs.get(key))
    fields = dict(
        zip(
            ("magic", "fmt", "oid", "version", "chunk_size", "chunks", "length"),
            struct.unpack_from(">4sB16sIIIQ", blob),
            strict=True,
        )
    )
    fields |= changes
    blob[:41] = struct.pack(">4sB16sIIIQ", *fields.values())
    vault.blobs.put(key, bytes(blob))


def _refused_quickly(vault, ref, match):
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match=match) as info:
            vault.pull(ref)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < 8 << 20  # nothing sized by the header was allocated
    last = vault.audit.entries()[-1]
    assert (last["action"], last["ref"], last["error"]) == (
        "pull-refused",
        "upper@1",
        str(info.value),
    )


def test_one_byte_chunks_with_a_huge_length_are_one_line_refusal(vault):
    ref = vault.push(sample_adapter("upper"))
    _rewrite_header(vault, chunk_size=1, chunks=2**32 - 1, length=2**32 - 1)
    _refused_quickly(vault, ref, "chunk size 1 is outside 1024..")


def test_huge_length_with_a_consistent_chunk_count_is_refused_before_allocation(vault):
    ref = vault.push(sample_adapter("upper"))
    _rewrite_header(vault, chunk_size=1024, chunks=2**30, length=2**40)
    _refused_quickly(vault, ref, "payload length does not match its header")


def test_chunk_count_that_does_not_match_the_length_is_refused(vault):
    ref = vault.push(sample_adapter("upper"))
    _rewrite_header(vault, chunks=7)
    _refused_quickly(vault, ref, "chunk count does not match length")


def test_huge_chunk_size_is_refused(vault):
    ref = vault.push(sample_adapter("upper"))
    _rewrite_header(vault, chunk_size=2**32 - 1, chunks=1)
    _refused_quickly(vault, ref, "chunk size 4294967295 is outside")
    assert objects.MAX_CHUNK < 2**32 - 1


@pytest.mark.parametrize("which", ["manifest", "keys/alpha", "record"])
def test_oversized_small_blob_is_refused_before_it_is_read(vault, which):
    ref = vault.push(sample_adapter("upper"))
    path = (
        vault.blobs.root / "names" / "upper" / "00000001"
        if which == "record"
        else _object_dir(vault) / which
    )
    with open(path, "r+b") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB claimed, nothing allocated on disk
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="byte bound") as info:
            vault.pull(ref)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < 8 << 20


def test_adapters_import_of_a_directory_linking_to_a_key_file_stores_nothing(
    qlora_home, qlora_cli, adapter_dir
):
    assert qlora_cli("team", "create", "alpha", "--no-passphrase").exit_code == 0
    key_file = qlora_home / "teams" / "alpha" / "key.json"
    (adapter_dir / "training_metadata.json").symlink_to(key_file)
    result = qlora_cli("adapters", "import", str(adapter_dir), "--name", "upper", "--team", "alpha")
    assert result.exit_code != 0
    assert "symlink" in result.err and result.err.strip().count("\n") == 0
    stored = qlora_home / "storage" / "vault" / "blobs"
    assert not stored.exists() or not any(p.is_file() for p in stored.rglob("*"))
