"""Built-in plugin ``lora``: adapter method ``lora`` (PEFT LoRA/QLoRA, rsLoRA, DoRA, frozen-A).

Nothing heavy is imported here: PEFT and torch load when a method is used.
"""

from hub import hookimpl


@hookimpl
def register_adapters(register):
    """Register the ``lora`` adapter method."""
    from plugins.lora.method import LoraMethod

    register(LoraMethod())
