"""Built-in plugin ``vault``: encrypted, signed adapter storage shared between teams.

Registers the ``vault`` storage backend (the default ``hub.storage``) and the
``team``, ``adapters``, ``audit`` and ``bench vault`` commands. Heavy work
(cryptography, torch for validation) happens inside the backend's methods.
"""

from hub import hookimpl


@hookimpl
def register_storage(register):
    """Register :class:`plugins.vault.backend.Vault`."""
    from plugins.vault.backend import Vault

    register(Vault)


@hookimpl
def register_commands(cli):
    """Add ``team ...``, ``adapters ...``, ``audit verify`` and ``bench vault``."""
    from plugins.vault import bench, commands, team_commands

    team_commands.add_to(cli)
    commands.add_to(cli)
    bench.add_to(cli)
