"""`python -m fargpu.server`: the node server CLI (same as `fargpu server`)."""

from .cli import app

app(prog_name="fargpu server")
