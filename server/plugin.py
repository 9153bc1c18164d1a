"""Built-in plugin `server`: the serve command and the server's own routes."""
