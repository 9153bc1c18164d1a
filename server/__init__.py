"""The multi-adapter server (Litestar)."""
