"""Shared set-up of the pipeline tests: the two-task mixture that the multi-task run, the mixture sweep and the
mixture resume test train, a sweep method's training run in the test's own process, and each task's splits
built once while a fixture runs the pipeline."""

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


def build_splits_once(monkeypatch: Any) -> None:
    """Within `monkeypatch`'s scope, each task's splits are built once per (task config, data dir, seed) and then
    handed out again: the same SplitResult the builder returns (fresh lists and stats, the frozen examples shared).

    A run builds its splits again in every stage that needs them (the pipeline's check before training, the
    trainer, the evaluations; a sweep once more per method and twin), and each build renders every row of the
    source's split files (tens of thousands for emotion and Multi30k) to remove duplicates before the limits
    apply. The data files do not change while a fixture runs, so the repeats are the same work; what the builder
    computes is tested in test_data_splits.py and test_data_mixture.py."""
    import tunebench.data.prepare as prepare
    import tunebench.data.tasks as tasks
    from tunebench.data.splits import SplitResult

    real = prepare.build_splits
    built: dict[tuple, Any] = {}

    def build(cfg: Any, data_dir: Path | None, seed: int, *, only: str | None = None) -> Any:
        key = (type(cfg).__name__, cfg.model_dump_json(), str(data_dir), seed, only)
        if key not in built:
            built[key] = real(cfg, data_dir, seed, only=only)
        done = built[key]
        return SplitResult(train=list(done.train), validation=list(done.validation), test=list(done.test),
                           stats=copy.deepcopy(done.stats))

    for module in (prepare, tasks):  # stages.splits_for imports it from prepare when called; tasks at its import
        monkeypatch.setattr(module, "build_splits", build)
