"""User-facing errors: one sentence naming the file, line or key, and what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class TunebenchError(Exception):
    """An error caused by the user's input (config, data, paths, models). Exit code 1."""

    exit_code = 1


class ConfigError(TunebenchError):
    """An invalid configuration: unknown key, wrong type or impossible combination. Exit code 2."""

    exit_code = 2


class DataError(TunebenchError):
    """Malformed or missing data: names the file and line, or the split."""


class ModelError(TunebenchError):
    """A model reference that cannot be resolved or loaded."""
