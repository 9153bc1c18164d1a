"""Built-in plugin `local` (filled in by its issue)."""
