"""Exceptions jaxplain raises for bad input; the command line prints them without a traceback."""


class JaxplainError(Exception):
    """Base class: a problem with what the user gave, explained in the message."""


class CheckpointError(JaxplainError):
    """A checkpoint is missing, unreadable, or does not match its config."""


class ModelNotFoundError(CheckpointError):
    """A model name is neither a local directory nor reachable on the hub."""


class InputError(JaxplainError, ValueError):
    """An input item (image, text, array) is unusable; the message names the item."""


class OutputError(JaxplainError, OSError):
    """An output cannot be written (a directory where a file is wanted, no permission, a full disk, another
    run holding it); the message names the output, and nothing half-written is left behind."""
