"""Built-in plugin `vault` (filled in by its issue)."""
