"""Static checks that keep the server's device logic honest (no model, no torch import).

1. Every tensor ``server/`` creates from scratch names its device: on a GPU a tensor made
   without one lands on the CPU and meets the model's tensors in a device mismatch (or a
   silent host round trip). ``*_like`` and ``new_*`` calls inherit their device and are fine.
2. The step loop's modules read tensors back to the host (a device sync) only where the
   engine counts it (``stats["syncs"]``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"

CREATORS = {
    "zeros", "ones", "empty", "full", "arange", "tensor", "randn", "rand", "randint",
    "Generator", "linspace", "eye", "as_tensor", "randperm",
}  # fmt: skip

ALLOWED_HOST_TENSORS = {
    ("random_adapter.py", "random_lora_for_shapes"): "test adapters are files, made in host memory",
}
"""``(file, function)`` -> why that function may create tensors on the CPU."""

STEP_LOOP = ("engine.py", "kvcache.py", "sampling.py", "lora.py")
SYNCS = {"tolist", "item", "cpu", "numpy"}
ALLOWED_SYNCS = {
    ("sampling.py", "sample_rows"): "the step's one counted read: tokens, statuses, logprobs",
}


def _calls(path: Path):
    """``(function name, call node)`` for every call in ``path``, with its enclosing function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node: ast.AST, func: str):
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            )
            if isinstance(child, ast.Call):
                yield inner, child
            yield from walk(child, inner)

    yield from walk(tree, "<module>")


def _torch_creator(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch":
        return f.attr if f.attr in CREATORS else None
    return None


def _device_missing(root: Path = SERVER) -> list[str]:
    found = []
    for path in sorted(root.glob("*.py")):
        for func, call in _calls(path):
            name = _torch_creator(call)
            if name is None or (path.name, func) in ALLOWED_HOST_TENSORS:
                continue
            if not any(kw.arg == "device" for kw in call.keywords):
                found.append(f"{path.name}:{call.lineno} {func}: torch.{name}(...) has no device=")
    return found


def _syncs(root: Path = SERVER) -> list[str]:
    found = []
    for name in STEP_LOOP:
        for func, call in _calls(root / name):
            f = call.func
            read = isinstance(f, ast.Attribute) and f.attr in SYNCS and not call.args
            if read and (name, func) not in ALLOWED_SYNCS:
                found.append(f"{name}:{call.lineno} {func}: .{f.attr}() reads the device")
    return found


def test_every_tensor_the_server_creates_names_its_device() -> None:
    assert _device_missing() == []


def test_the_step_loop_reads_the_device_only_where_it_is_counted() -> None:
    assert _syncs() == []


def test_the_check_finds_a_tensor_without_a_device(tmp_path) -> None:
    """The check itself: a deviceless ``torch.zeros`` and a stray ``.item()`` are reported."""
    (tmp_path / "engine.py").write_text(
        "import torch\n"
        "def step(x):\n"
        "    mask = torch.zeros(3, dtype=torch.long)\n"
        "    ok = torch.ones(3, device=x.device)\n"
        "    return x.sum().item()\n",
        encoding="utf-8",
    )
    for name in STEP_LOOP[1:]:
        (tmp_path / name).write_text("", encoding="utf-8")
    assert _device_missing(tmp_path) == ["engine.py:3 step: torch.zeros(...) has no device="]
    assert _syncs(tmp_path) == ["engine.py:5 step: .item() reads the device"]
