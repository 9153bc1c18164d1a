"""Built-in plugin ``local``: plain-file adapter storage for development (no encryption)."""

from hub import hookimpl


@hookimpl
def register_storage(register):
    """Register :class:`plugins.local.backend.LocalStore`."""
    from plugins.local.backend import LocalStore

    register(LocalStore)
