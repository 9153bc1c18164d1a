"""Built-in plugin ``nf4``: bitsandbytes quantizers and the ``quantize`` / ``bench quant`` commands.

Registers the quantizers ``nf4`` (NF4 + double quantization, bf16 compute;
the default), ``fp4``, ``int8`` and ``none`` (bf16). torch, transformers and
bitsandbytes are imported only when a quantizer or command runs.
"""

from hub import hookimpl


@hookimpl
def register_quantizers(register):
    """Register ``nf4``, ``fp4``, ``int8`` and ``none``."""
    from plugins.nf4.quantizers import builtin_quantizers

    for quantizer in builtin_quantizers():
        register(quantizer)


@hookimpl
def register_commands(cli):
    """Add ``qlora-hub quantize`` and ``qlora-hub bench quant``."""
    from plugins.nf4.commands import add_commands

    add_commands(cli)
