"""One module per CLI command; each exposes ``register_cli(subparsers)``."""
