"""The pipeline package's rooms: its entry points import from `tunebench.pipeline`, only `pipeline/write.py`
writes files, and importing it loads neither torch nor transformers (the CLI's fast path)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tunebench.pipeline as pipeline

PACKAGE = Path(pipeline.__file__).parent
# Calls that put something on the disk: the atomic writers, shutil's tree operations, Path's writers.
WRITING_CALLS = {"atomic_write_json", "atomic_write_jsonl", "atomic_write_text", "atomic_write_bytes", "atomic_dir",
                 "rmtree", "copytree", "copy", "copyfile", "move", "write_text", "write_bytes", "mkdir", "unlink"}


def _writing_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in WRITING_CALLS:
                found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_only_the_writer_module_writes():
    modules = sorted(PACKAGE.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "run.py", "multitask.py", "sweep.py", "stages.py", "write.py"}
    assert _writing_calls(PACKAGE / "write.py")  # the check sees the writer's own calls
    for module in modules:
        if module.name != "write.py":
            assert _writing_calls(module) == [], module.name


def test_entry_points_import_from_the_package():
    from tunebench.pipeline.run import run_all
    from tunebench.pipeline.sweep import run_sweep
    from tunebench.pipeline.write import write_report

    assert (pipeline.run_all, pipeline.run_sweep, pipeline.write_report) == (run_all, run_sweep, write_report)
    for name in pipeline.__all__:
        assert callable(getattr(pipeline, name)) or isinstance(getattr(pipeline, name), Path), name


def test_importing_the_pipeline_loads_no_torch():
    code = ("import sys, tunebench.pipeline; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
