"""Errors a user can cause.

Every one carries a one-line message that names the problem and the fix. The
CLI prints it without a traceback and exits with status 2 (``--verbose``
shows the traceback).
"""


class HubError(Exception):
    """Base class for every error caused by user input, configuration or plugins."""

    exit_code = 2


class ConfigError(HubError):
    """A configuration file, environment variable or flag is wrong."""


class PluginError(HubError):
    """A plugin failed to import, registered something invalid, or clashed with another."""


class UnknownNameError(HubError, KeyError):
    """A name (quantizer, storage backend, adapter, ...) is not registered or not found."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class ValidationError(HubError):
    """An artifact (adapter, checkpoint, dataset) failed validation."""


class IntegrityError(HubError):
    """Stored bytes do not match their hashes, signatures or authentication tags."""


class AccessError(HubError):
    """The acting team may not do this (missing key, not shared, not trusted)."""
