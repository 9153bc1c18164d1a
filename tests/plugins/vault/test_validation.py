"""What the core refuses on a push to the vault: bad files, bad tensors, policy vetoes;
and what import refuses: pickles. The vault itself only stores (hub.adapters validates)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save

from hub import hookimpl
from hub.adapters import Adapters
from hub.errors import ValidationError
from hub.testing.storage import sample_adapter
from hub.types import AdapterPayload
from hub.validation import refuse_pickles
from plugins.vault.backend import Vault

PREFIX = "base_model.model.model.layers.0.self_attn"


@pytest.fixture
def vault(vault):
    """The vault acting as alpha, behind the core's lifecycle (as open_store gives it)."""
    return Adapters(None, vault, team="alpha")


def _with_tensors(tensors, **config):
    adapter = sample_adapter("upper")
    cfg = json.loads(adapter.files[AdapterPayload.CONFIG]) | config
    adapter.files[AdapterPayload.CONFIG] = json.dumps(cfg).encode()
    adapter.files[AdapterPayload.WEIGHTS] = save(tensors)
    return adapter


def _lora(module="q_proj", r=4, hidden=64, a=None):
    a = np.zeros((r, hidden), np.float32) if a is None else a
    return {
        f"{PREFIX}.{module}.lora_A.weight": a,
        f"{PREFIX}.{module}.lora_B.weight": np.zeros((hidden, r), np.float32),
    }


def test_nan_is_refused(vault):
    a = np.zeros((4, 64), np.float32)
    a[1, 2] = np.nan
    with pytest.raises(ValidationError, match="contains NaN or Inf"):
        vault.push(_with_tensors(_lora(a=a)))


def test_inf_is_refused(vault):
    a = np.zeros((4, 64), np.float32)
    a[0, 0] = np.inf
    with pytest.raises(ValidationError, match="contains NaN or Inf"):
        vault.push(_with_tensors(_lora(a=a)))


def test_rank_must_match_config(vault):
    with pytest.raises(ValidationError, match="rank 4 but adapter_config says r=8"):
        vault.push(_with_tensors(_lora(), r=8))


def test_module_outside_target_modules_is_refused(vault):
    with pytest.raises(ValidationError, match="not in target_modules"):
        vault.push(_with_tensors(_lora(module="o_proj")))


def test_unpaired_lora_matrix_is_refused(vault):
    t = _lora()
    t.pop(f"{PREFIX}.q_proj.lora_B.weight")
    with pytest.raises(ValidationError, match="without its pair"):
        vault.push(_with_tensors(t))


def test_extra_file_is_refused(vault):
    adapter = sample_adapter("upper")
    adapter.files["adapter_model.bin"] = b"\x80\x04"
    with pytest.raises(ValidationError, match="'adapter_model.bin' is not allowed"):
        vault.push(adapter)


def test_config_must_be_a_json_object(vault):
    adapter = sample_adapter("upper")
    adapter.files[AdapterPayload.CONFIG] = b"[1, 2]"
    with pytest.raises(ValidationError, match="is not a JSON object"):
        vault.push(adapter)


def test_size_cap_is_enforced(home):
    vault = Vault(home / "storage" / "vault", team="alpha", max_adapter_bytes=1000)
    with pytest.raises(ValidationError, match="over vault.max_adapter_bytes=1000"):
        Adapters(None, vault).push(sample_adapter("upper"), team="alpha")


def test_all_problems_are_listed_in_one_error(vault):
    adapter = sample_adapter("upper")
    adapter.files["x.pt"] = b""
    adapter.files["notes.txt"] = b""
    with pytest.raises(ValidationError, match="'notes.txt' is not allowed; file 'x.pt'"):
        vault.push(adapter)


def test_validate_adapter_hook_can_veto(home, hub_factory):
    class Policy:
        @hookimpl
        def validate_adapter(self, adapter):
            return ["names starting with 'u' are banned"] if adapter.name.startswith("u") else []

    vault = Adapters(hub_factory(Policy()), Vault(home / "storage" / "vault"), team="alpha")
    with pytest.raises(ValidationError, match="vetoed by policy: names starting with 'u'"):
        vault.push(sample_adapter("upper"))
    assert vault.push(sample_adapter("lower")).version == 1


def test_published_and_loaded_hooks_fire(home, hub_factory):
    seen = []

    class Listener:
        @hookimpl
        def adapter_published(self, ref, team, manifest):
            seen.append(("published", str(ref), team, manifest["publisher"]))

        @hookimpl
        def adapter_loaded(self, ref, team, where):
            seen.append(("loaded", str(ref), team, where))

    vault = Adapters(hub_factory(Listener()), Vault(home / "storage" / "vault"), team="alpha")
    ref = vault.push(sample_adapter("upper"))
    vault.pull(ref, where="server")
    assert seen == [
        ("published", "upper@1", "alpha", "alpha"),
        ("loaded", "upper@1", "alpha", "server"),
    ]


@pytest.mark.parametrize("name", ["adapter_model.bin", "training_args.pt", "optimizer.pkl"])
def test_pickle_files_are_refused_by_name(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValidationError, match=f"refusing pickle-format file\\(s\\) {name}"):
        refuse_pickles(tmp_path)


@pytest.mark.parametrize(
    "bad", ["UPPER", "Upper", "uPPer"], ids=["upper-case", "title-case", "mixed-case"]
)
def test_case_variants_collide(vault, bad):
    vault.push(sample_adapter("upper"))
    with pytest.raises(ValidationError, match="differ only by case"):
        vault.push(sample_adapter(bad))


@pytest.mark.parametrize(
    "confusable",
    ["\u0440ython", "upp\u0435r", "\uff55pper", "upper\u200b", "u\u0301pper"],
    ids=["cyrillic-er", "cyrillic-ie", "fullwidth-u", "zero-width-space", "combining-accent"],
)
def test_unicode_confusables_are_rejected(vault, confusable):
    with pytest.raises(ValidationError, match="ASCII letters"):
        vault.push(sample_adapter(confusable))
