"""The hub's Trainer: transformers' ``Trainer`` with a pluggable optimizer and pickle-free checkpoints.

The stock Trainer saves optimizer, scheduler and RNG state with ``torch.save``
and reads them back with ``torch.load``. This subclass writes them as
safetensors + JSON instead and reads only those, so a checkpoint directory
(and ``--resume``) never involves pickle. The training loop itself is the
stock one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
RNG_TENSORS = "rng_state.safetensors"
RNG_JSON = "rng_state.json"


def optimizer_state_to_files(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into safetensors tensors and a JSON remainder.

    Tensors are keyed by their path (``"0/exp_avg"``; bitsandbytes nests its state one
    level deeper, ``"0/__bnb_optimizer_quant_state__/state1"``).
    """
    import torch

    tensors: dict[str, Any] = {}

    def split(state: dict[str, Any], prefix: str) -> dict[str, Any]:
        plain: dict[str, Any] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}/{key}"] = value.detach().contiguous().cpu()
            elif isinstance(value, dict):
                plain[key] = split(value, f"{prefix}/{key}")
            else:
                plain[key] = value
        return plain

    rest = {
        "param_groups": state_dict["param_groups"],
        "state": {str(idx): split(state, str(idx)) for idx, state in state_dict["state"].items()},
    }
    return tensors, rest


def optimizer_state_from_files(tensors: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_files`."""
    state: dict[int, dict[str, Any]] = {int(i): v for i, v in rest["state"].items()}
    for path, tensor in tensors.items():
        idx, *keys = path.split("/")
        node = state.setdefault(int(idx), {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, default=_json_default))
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def make_trainer_class() -> type:
    """Build ``HubTrainer`` (a function so transformers is imported only when training)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Trainer

    class HubTrainer(Trainer):
        """``Trainer`` + an optimizer from the hub's registry + safetensors/JSON checkpoint state."""

        def __init__(self, *args: Any, optimizer_factory: Any, **kwargs: Any) -> None:
            self.optimizer_factory = optimizer_factory
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is None:
                opt_model = self.model if model is None else model
                params = [p for p in opt_model.parameters() if p.requires_grad]
                self.optimizer = self.optimizer_factory.build(
                    params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay
                )
            return self.optimizer

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            super()._save(output_dir, state_dict)
            # the stock Trainer pickles its arguments beside the model; keep checkpoints pickle-free
            args_file = Path(output_dir or self.args.output_dir) / "training_args.bin"
            if self.args.should_save and args_file.exists():
                args_file.unlink()

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            if not self.args.should_save:
                return
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            tensors, rest = optimizer_state_to_files(self.optimizer.state_dict())
            save_file(tensors, str(out / OPTIMIZER_TENSORS))
            _write_json(out / OPTIMIZER_JSON, rest)
            sched = {k: v for k, v in self.lr_scheduler.state_dict().items() if k != "lr_lambdas"}
            _write_json(out / SCHEDULER_JSON, sched)

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if checkpoint is None:
                return
            ckpt = Path(checkpoint)
            if not (ckpt / OPTIMIZER_TENSORS).is_file():
                return
            state = optimizer_state_from_files(
                load_file(str(ckpt / OPTIMIZER_TENSORS)),
                json.loads((ckpt / OPTIMIZER_JSON).read_text()),
            )
            self.optimizer.load_state_dict(state)
            sched = json.loads((ckpt / SCHEDULER_JSON).read_text())
            sched["lr_lambdas"] = [None] * len(self.lr_scheduler.lr_lambdas)
            self.lr_scheduler.load_state_dict(sched)

        def _rng_names(self) -> tuple[str, str]:
            if self.args.world_size > 1:
                rank = self.args.process_index
                return f"rng_state_{rank}.safetensors", f"rng_state_{rank}.json"
            return RNG_TENSORS, RNG_JSON

        def _save_rng_state(self, output_dir: str) -> None:
            out = Path(output_dir)
            os.makedirs(out, exist_ok=True)
            tensors_name, json_name = self._rng_names()
            np_state = np.random.get_state()
            rng = {
                "cpu": torch.random.get_rng_state(),
                "numpy": torch.from_numpy(np_state[1].copy()),
            }
            if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU
                rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            save_file(rng, str(out / tensors_name))
            _write_json(
                out / json_name,
                {"python": random.getstate(), "numpy": [np_state[0], *np_state[2:]]},
            )

        def _load_rng_state(self, checkpoint: str | None) -> None:
            if checkpoint is None:
                return
            tensors_name, json_name = self._rng_names()
            ckpt = Path(checkpoint)
            if not (ckpt / tensors_name).is_file():
                return
            tensors = load_file(str(ckpt / tensors_name))
            rest = json.loads((ckpt / json_name).read_text())
            version, state, *tail = rest["python"]
            random.setstate((version, tuple(state), tail[0] if tail else None))
            kind, pos, has_gauss, gauss = rest["numpy"]
            np.random.set_state((kind, tensors["numpy"].numpy(), pos, has_gauss, gauss))
            torch.random.set_rng_state(tensors["cpu"])
            cuda = [tensors[f"cuda{i}"] for i in range(len(tensors)) if f"cuda{i}" in tensors]
            if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)

    return HubTrainer
