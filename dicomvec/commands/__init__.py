"""CLI subcommands: each module exposes ``register(subparsers)`` (sets ``func=run``)."""
