"""Shared set-up of the pipeline tests: the two-task mixture that the multi-task run and the mixture sweep both
train, and a sweep method's training run in the test's own process."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

# The mixture's two trained tasks: emotion classification and Multi30k en->de translation (real rows of each).
EMOTION = {"name": "emotion", "source": "emotion", "template": {"name": "emotion"},
           "splits": {"validation": "validation"}}
MULTI30K = {"name": "multi30k_en_de", "source": "multi30k", "format": "parallel", "template": {"name": "translation"},
            "splits": {"validation": "val", "test": "test_2016_flickr"}, "generation": {"max_new_tokens": 6}}


def mixture_tasks(emotion: dict[str, int], multi30k: dict[str, int], *, emotion_variant: int | str | None = None,
                  **keys: Any) -> list[dict[str, Any]]:
    """data.tasks for emotion and multi30k_en_de with these `limits` (split -> examples) and, if given, emotion's
    template variant (an index or "random"); `keys` adds the same keys (e.g. weight) to both."""
    tasks = [{**copy.deepcopy(task), "limits": dict(limits), **keys}
             for task, limits in ((EMOTION, emotion), (MULTI30K, multi30k))]
    if emotion_variant is not None:
        tasks[0]["template"]["variant"] = emotion_variant
    return tasks


def train_in_process(method: str, run: Any, data_dir: Path | None) -> None:
    """What the sweep's `_train_in_subprocess` runs (`tunebench train RUN/config.yaml --resume`), in this process:
    for the tests of what the sweep does with a method's run (not of the process it trains in), without a
    fresh interpreter importing torch and transformers per method. A training error becomes the same failed
    method (`method '<name>': <sentence>`, its exit code)."""
    from tunebench.config import load_config, resolve_data_dir
    from tunebench.errors import TunebenchError
    from tunebench.pipeline.sweep import _MethodFailed
    from tunebench.train.loop import train

    cfg = load_config(run.config)
    try:
        result = train(cfg, data_dir=resolve_data_dir(data_dir, cfg), resume=True)
    except TunebenchError as exc:
        raise _MethodFailed(f"method '{method}': {exc}", exc.exit_code if exc.exit_code in (1, 2) else 1) from None
    if result.interrupted:
        raise KeyboardInterrupt
