"""User-facing errors: one sentence naming the file, line or key, and what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


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


def file_load_errors() -> tuple[type[BaseException], ...]:
    """What loading libraries raise for a corrupt or refused file, to turn into one sentence naming the file.

    OSError (missing/unreadable), ValueError (bad JSON or config values), RuntimeError and KeyError (torch and
    transformers on mismatched weights), EOFError, pickle's UnpicklingError (torch's `weights_only` loader
    refusing a pickle), safetensors' SafetensorError (a truncated or corrupt .safetensors) and Jinja's
    TemplateError (a chat template that fails or trips the sandbox). Imported on use: this module stays light.
    """
    import pickle

    from jinja2 import TemplateError
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError,
            TemplateError)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A suffix for an error about an unknown `name`: "; did you mean 'x'?" for close matches among `known`, else "".

    Close means: starts with `name` (`date` -> `date_understanding`), or difflib's ratio >= 0.6 (the stdlib
    default); case-insensitive; at most three suggestions.
    """
    import difflib

    known = list(known)
    by_lower = {k.lower(): k for k in known}
    prefixed = [k for k in by_lower if k.startswith(name.lower()) and name]
    close = list(dict.fromkeys(prefixed + difflib.get_close_matches(name.lower(), list(by_lower), n=3)))[:3]
    if not close:
        return ""
    names = " or ".join(f"'{by_lower[c]}'" for c in close)
    return f"; did you mean {names}?"
