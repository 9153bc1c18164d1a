"""Built-in plugin `paged` (filled in by its issue)."""
