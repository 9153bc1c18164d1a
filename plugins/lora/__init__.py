"""Built-in plugin `lora` (filled in by its issue)."""
