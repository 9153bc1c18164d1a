"""Built-in plugins; each is an ordinary plugin registered like a third-party one."""
