"""Sandboxed Jinja2 for task specs: a spec from anywhere cannot reach Python internals, and a field the data
lacks is an error naming the spec file and key instead of an empty string in the prompt."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tunebench.errors import ConfigError


class SpecError(ConfigError):
    """A task spec that cannot run: names the spec file and the key."""


@lru_cache(maxsize=1)
def _env() -> Any:
    from tunebench.bench.perplexity import wikitext_detokenize
    from tunebench.data.templates import sandboxed_environment

    env = sandboxed_environment(keep_trailing_newline=True)
    env.filters["wikitext_detokenize"] = wikitext_detokenize  # lm-eval's wikitext preprocessing, for text tasks
    return env


def check_syntax(text: str, origin: str, key: str) -> None:
    """Parse a template now, so a typo fails when the spec loads rather than mid-benchmark."""
    from jinja2 import TemplateSyntaxError

    try:
        _env().parse(text)
    except TemplateSyntaxError as exc:
        raise SpecError(f"{origin}: {key}: invalid Jinja2 template ({exc.message}, line {exc.lineno})") from None


@lru_cache(maxsize=256)
def _compiled(text: str) -> Any:
    return _env().from_string(text)


def render(text: str, fields: dict[str, Any], origin: str, key: str, where: str) -> str:
    """Render one template; failures name the spec file, its key and the record (`where`)."""
    from jinja2 import TemplateError, UndefinedError

    try:
        return _compiled(text).render(**fields)
    except UndefinedError as exc:
        have = ", ".join(sorted(fields)) or "none"
        raise SpecError(
            f"{origin}: {key}: {exc.message} in {where} (its fields: {have}); fix field_map or the template"
        ) from None
    except TemplateError as exc:
        raise SpecError(f"{origin}: {key}: cannot render for {where} ({exc})") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SpecError(f"{origin}: {key}: cannot render for {where} ({type(exc).__name__}: {exc})") from None
