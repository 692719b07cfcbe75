"""fargpu node server: accepts stub connections, authenticates them, and runs one replay worker per session."""
