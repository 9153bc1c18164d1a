"""Built-in plugin ``paged``: optimizers ``paged_adamw_32bit``, ``paged_adamw_8bit``,
``adamw_8bit`` (bitsandbytes) and ``adamw`` (torch). bitsandbytes loads on first build."""

from hub import hookimpl


@hookimpl
def register_optimizers(register):
    """Register every factory in :data:`plugins.paged.factories.FACTORIES`."""
    from plugins.paged.factories import FACTORIES

    for factory in FACTORIES:
        register(factory)
