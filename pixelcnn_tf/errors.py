"""Errors that mean "the user must change something"; each message says what.

Kept free of TensorFlow imports so the command-line wrapper can catch them cheaply.
"""


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it and the fix."""


class DataError(RuntimeError):
    """A dataset cannot be loaded; the message says why and what to do."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to do."""
