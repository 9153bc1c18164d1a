"""Built-in plugin `plain` (filled in by its issue)."""
