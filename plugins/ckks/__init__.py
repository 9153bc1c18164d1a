"""Built-in plugin `ckks` (filled in by its issue)."""
