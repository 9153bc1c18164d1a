"""Built-in plugin `trainer` (filled in by its issue)."""
