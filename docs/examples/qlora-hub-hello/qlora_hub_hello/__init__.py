"""Example qlora-hub plugin, walked through in docs/writing-plugins.md.

It implements four hooks:

- ``register_optimizers``: an ``sgd`` optimizer (torch SGD with momentum);
- ``validate_adapter``: a policy refusing LoRA adapters above a maximum rank;
- ``register_commands``: ``qlora-hub hello``;
- ``register_routes``: ``GET /hello`` on ``qlora-hub serve``.
"""

from __future__ import annotations

import json

import click

from hub import hookimpl

MAX_RANK = 64


class SGDFactory:
    """Plain SGD with momentum: a cheap baseline for optimizer comparisons."""

    name = "sgd"
    description = "torch.optim.SGD with momentum 0.9"

    def build(self, params, *, lr: float, weight_decay: float = 0.0):
        import torch  # heavy import inside the method, never at module level

        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


@hookimpl
def register_optimizers(register):
    register(SGDFactory())


@hookimpl
def validate_adapter(adapter):
    config = json.loads(adapter.files["adapter_config.json"])
    rank = config.get("r", 0)
    if rank > MAX_RANK:
        return [f"LoRA rank {rank} exceeds this hub's policy maximum of {MAX_RANK}"]
    return None


@hookimpl
def register_commands(cli):
    @cli.command("hello")
    @click.pass_obj
    def hello(state):
        """Say hello and count the optimizers this hub knows."""
        click.echo(f"hello from qlora-hub-hello: {len(state.hub.optimizers)} optimizers registered")


@hookimpl
def register_routes(register):
    from litestar import get

    @get("/hello", sync_to_thread=False)
    def hello_route() -> dict[str, str]:
        return {"hello": "qlora-hub-hello"}

    register(hello_route)
