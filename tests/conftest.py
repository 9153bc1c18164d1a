"""Shared fixtures. The qlora-hub pytest plugin (hub.testing) is loaded through its
pytest11 entry point, so ``hub_factory``, ``embedded_base`` and ``qlora_home`` are here too."""

pytest_plugins = ["pytester"]
