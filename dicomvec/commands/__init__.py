"""CLI subcommands: each module exposes ``register(subparsers)`` (see dicomvec/cli.py COMMANDS)."""
