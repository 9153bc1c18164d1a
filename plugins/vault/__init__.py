"""Built-in plugin ``vault``: encrypted, signed adapter storage shared between teams.

Registers the ``vault`` storage backend (the default ``hub.storage``) and the
``audit`` and ``bench vault`` commands (the ``team`` and ``adapters`` commands
are the core's, for every backend). Heavy work (cryptography) happens inside
the backend's methods.
"""

from hub import hookimpl


@hookimpl
def register_storage(register):
    """Register :class:`plugins.vault.backend.Vault`."""
    from plugins.vault.backend import Vault

    register(Vault)


@hookimpl
def register_blob_stores(register):
    """Register ``file://`` (:class:`plugins.vault.blobs.FileBlobStore`)."""

    def open_file(url, settings):
        from plugins.vault.blobs import FileBlobStore

        return FileBlobStore(url)

    register("file", open_file)


@hookimpl
def register_commands(cli):
    """Add ``audit verify|show`` and ``bench vault``."""
    from plugins.vault import bench, commands

    commands.add_to(cli)
    bench.add_to(cli)
