"""Model references, fine-tuning methods and saving; `chat` (prompt formatting) stays import-light.

Names are re-exported lazily so `from tunebench.models.chat import ...` does not pull in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LoadedModel": "load",
    "LoadedTokenizer": "load",
    "load_model": "load",
    "load_tokenizer_only": "load",
    "resolve_model_ref": "load",
    "default_gguf_path": "load",
    "detect_family": "load",
    "forward_params": "load",
    "base_model_config": "load",
    "apply_method": "methods",
    "get_method": "methods",
    "method_of_output": "methods",
    "METHODS": "methods",
    "parameter_counts": "methods",
    "block_stack": "methods",
    "save_trained": "export",
    "export_merged": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tunebench.models' has no attribute '{name}'")
    return getattr(import_module(f"tunebench.models.{module}"), name)
