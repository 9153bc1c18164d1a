"""Built-in plugin `nf4` (filled in by its issue)."""
