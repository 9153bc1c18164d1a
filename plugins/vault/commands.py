"""Placeholder; the adapters commands follow."""


def add_to(cli):
    """Nothing yet."""
