"""CLI sub-commands; each module has ``register(subparsers)`` (see ``dicomvec.cli``)."""
