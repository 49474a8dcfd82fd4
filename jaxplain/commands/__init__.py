"""The sub-commands of the ``jaxplain`` command line, one module each, each with ``register(subparsers)``."""
