"""The whole job as plain function calls on plain data: train → evaluate → compare → bench → report.

One room per concern (a newcomer's map):

- `pipeline.run`: the commands `run`, `demo`, `eval`, `bench`, `parity` and `run --single-task`, strung
  together from the stages; each stage is skipped when its output is already there, so a killed run resumes.
- `pipeline.multitask`: what a mixture (`data.tasks`) adds: per-task evaluation under `tasks/<task>/`, its
  forgetting table, and the single-task twin's config and side-by-side document.
- `pipeline.sweep`: `tunebench sweep`, every method trained and evaluated against one shared base (the sweep's
  data is `tunebench.sweep`'s).
- `pipeline.stages`: the stages of one model (evaluation, benchmarks and HELM view, comparison) computed and
  handed to the writer, and the helpers they share.
- `pipeline.write`: the one place the run directory is written (at the paths `tunebench.rundir` names, on the
  main process only); stages return data and never write.

The names below are the pipeline's entry points, as `tunebench/cli.py` and the tests import them.
"""

from tunebench.pipeline.run import (
    DEMO_CONFIG,
    bench_reference,
    evaluate_reference,
    parity_reference,
    run_all,
    run_single_vs_multi,
)
from tunebench.pipeline.stages import bench_into, bench_loaded, compare_paths, evaluate_into
from tunebench.pipeline.sweep import run_sweep
from tunebench.pipeline.write import (
    write_bench_task,
    write_benchmarks,
    write_comparison,
    write_evaluation,
    write_helm,
    write_report,
    write_sweep_report,
)

__all__ = [
    "DEMO_CONFIG", "bench_into", "bench_loaded", "bench_reference", "compare_paths", "evaluate_into",
    "evaluate_reference", "parity_reference", "run_all", "run_single_vs_multi", "run_sweep", "write_bench_task",
    "write_benchmarks", "write_comparison", "write_evaluation", "write_helm", "write_report", "write_sweep_report",
]
