"""qlora-hub: a plugin-based hub for QLoRA adapters.

Plugin authors write::

    from hub import hookimpl

    @hookimpl
    def register_quantizers(register):
        register(MyQuantizer())
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT_NAME = "qlora_hub"
"""pluggy project name; also the entry-point group third-party plugins use."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

try:
    __version__ = version("qlora-hub")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
