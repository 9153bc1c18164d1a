"""The web console (``qlora-hub ui``) and the server's read-only operator page (``/ui``).

See docs/console.md. Nothing heavy is imported here.
"""
