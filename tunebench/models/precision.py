"""Numeric precision, chosen by measurement: the precisions table, the matmul probe and its cache.

A CPU flag does not say which precision is fastest: on an Intel Xeon with avx512_bf16 a 2048² matmul ran at
168 GFLOP/s in bf16 and 334 in fp32, while on an AMD Zen 4 bf16 was the faster (issue 14). So `auto` (training's
`train.bf16`, inference's `eval.precision`) times the model's own matmul shapes -- (tokens x hidden) @ (hidden x
hidden) and (tokens x hidden) @ (hidden x intermediate), a few milliseconds each -- in every candidate
precision, and takes the fastest whose weights fit the memory budget (`tunebench.memory.available_bytes`). The
measured GFLOP/s are cached as JSON under the tunebench cache dir, keyed by the machine (CPU model and flags, or
the GPU's name), the torch version and the shape set, so a run on the same machine probes once.

Inference precisions are applied to a copy of the model (`precision_variant`): bf16 and fp16 cast the weights
(faster than autocast, which re-casts every weight on every call), int8 is PyTorch's dynamic quantization of the
nn.Linear layers (`torch.ao.quantization.quantize_dynamic`: int8 weights, activations quantized per batch), CPU
only. Hand-written because the measurement is this project's policy; the conversions are torch's own.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunebench.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Precision:
    """One row of the precisions table.

    name: the short name configs and records use. dtype: the torch dtype name matmuls run in. weight_bytes: bytes
    per weight held in this precision (the memory budget's estimate). devices: device types it runs on.
    training: usable as training's autocast precision. probe: timed by `auto` (int8 is only ever asked for).
    """

    name: str
    dtype: str
    weight_bytes: int
    devices: tuple[str, ...]
    training: bool
    probe: bool


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float32", 4, ("cpu", "cuda", "mps"), training=True, probe=True),
    Precision("bf16", "bfloat16", 2, ("cpu", "cuda"), training=True, probe=True),
    Precision("fp16", "float16", 2, ("cuda",), training=False, probe=True),
    Precision("int8", "qint8", 1, ("cpu",), training=False, probe=False),
)}
REFERENCE = "fp32"
PROBE_TOKENS = 128  # rows of the probe's activations: a prompt's or a short micro-batch's worth of tokens
PROBE_SECONDS = 0.01  # time spent per (shape, precision) and round, after one warm-up call
PROBE_ROUNDS = 3  # interleaved rounds over the precisions
CACHE_SCHEMA = "tunebench.precision-probe/1"

Timer = Callable[[str, tuple[int, int, int]], float]
"""(precision name, (m, k, n)) -> seconds one (m x k) @ (k x n) matmul takes."""


def precision_names() -> list[str]:
    return list(PRECISIONS)


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype a precision computes in (int8's activations stay float32)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "qint8": torch.float32}[PRECISIONS[name].dtype]


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively (AVX512-BF16 or AMX on a CPU; the GPU says on CUDA)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def candidates(device: torch.device, *, training: bool) -> list[str]:
    """Precisions `auto` times on `device`: fp32 and bf16 (on CUDA only where the GPU has bf16), fp16 only on a
    GPU and only for inference."""
    out = []
    for p in PRECISIONS.values():
        if not p.probe or device.type not in p.devices or (training and not p.training):
            continue
        if p.name == "bf16" and device.type == "cuda" and not bf16_native(device):
            continue
        out.append(p.name)
    return out


def model_shapes(config: Any, tokens: int = PROBE_TOKENS) -> list[tuple[int, int, int]]:
    """The probe's matmuls for a transformers config: [(tokens, hidden, hidden), (tokens, hidden, intermediate)].

    hidden: `hidden_size` (or d_model / n_embd); intermediate: `intermediate_size` (or d_ff / n_inner, else 4x
    hidden, GPT-2's default). Raises ValueError when the config names no hidden size.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = next((getattr(text, k) for k in ("hidden_size", "d_model", "n_embd") if getattr(text, k, None)), None)
    if not hidden:
        raise ValueError(f"{type(config).__name__} names no hidden size")
    inter = next((getattr(text, k) for k in ("intermediate_size", "d_ff", "n_inner") if getattr(text, k, None)),
                 4 * hidden)
    return [(tokens, int(hidden), int(hidden)), (tokens, int(hidden), int(inter))]


def parameter_estimate(config: Any) -> int:
    """Weights of a transformer from its config, without loading it: layers x (4 h² + 3 h i) + vocab x h.

    (Attention's four projections and a gated feed-forward's three; grouped-query attention makes this an upper
    bound.) Used for the memory budget only.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    (_, hidden, _), (_, _, inter) = model_shapes(config, 1)
    layers = next((getattr(text, k) for k in ("num_hidden_layers", "num_layers", "n_layer") if getattr(text, k, None)),
                  1)
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    return int(layers) * (4 * hidden * hidden + 3 * hidden * inter) + vocab * hidden


def time_matmul(name: str, shape: tuple[int, int, int], device: torch.device | None = None,
                seconds: float = PROBE_SECONDS) -> float:
    """Seconds one (m x k) @ (k x n) matmul takes in precision `name` on `device`, run as a linear layer runs it
    (`torch.nn.functional.linear` with an (n, k) weight: bf16 `torch.matmul` of a plain (k, n) matrix takes
    another, on some CPUs far slower, kernel).

    After a warm-up call, the rows grow 1, 4, 16, ... up to m; a call that takes `seconds` or more (twice) ends
    the probe, its time scaled to m rows (an emulated bf16 may run at 1 GFLOP/s, where one full-size call of a
    large model's shapes takes seconds).
    Otherwise the full shape is timed repeatedly (at least 3 calls, about `seconds` in all) and the fastest call
    counts -- the minimum, because other load only ever adds time. On a CPU the matmul runs on one thread: the
    ratio between precisions is what decides, and a multi-threaded call on a busy machine mostly measures how
    long its threads wait to be scheduled (30 ms for a 128 x 64 x 128 fp32 matmul at load 7 on 2 cores).
    """
    import torch

    device = device or torch.device("cpu")
    m, k, n = shape
    dtype = dtype_of(name)
    a = torch.randn(m, k, device=device).to(dtype)
    weight = torch.randn(n, k, device=device).to(dtype)  # (out, in), as nn.Linear holds it

    def call(rows: int) -> float:
        t0 = time.perf_counter()
        torch.nn.functional.linear(a[:rows], weight)  # the kernel a model's linear layers run (x @ W^T)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        call(1)  # warm-up: the first call of a dtype pays one-time set-up
        rows = 1
        while True:
            first = call(rows)
            if first >= seconds:
                first = min(first, call(rows))  # confirmed by a second call: a preempted call alone says nothing
            if first >= seconds:
                return first * m / rows
            if rows >= m:
                break
            rows = min(m, rows * 4)
        times = [first]
        start = time.perf_counter()
        while len(times) < 4 or time.perf_counter() - start < seconds:
            times.append(call(m))
        return min(times[1:])
    finally:
        torch.set_num_threads(threads)


def machine_key(device: torch.device) -> dict[str, str]:
    """What the probe's result depends on besides the shapes: the processor (CPU model and a hash of its flags,
    or the GPU's name), the device type and the torch version. Not the thread count: processes of one run
    started with different OMP_NUM_THREADS must still read one cached verdict, so they compute alike."""
    import torch

    if device.type == "cuda":
        processor, flags = torch.cuda.get_device_name(device), ""
    else:
        processor, flags = platform.processor() or platform.machine(), ""
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            for line in cpuinfo.read_text(errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "model name" and processor in ("", platform.machine()):
                    processor = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.strip()
    return {"device": device.type, "processor": processor,
            "flags": hashlib.sha256(flags.encode()).hexdigest()[:16], "torch": torch.__version__}


def _cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / "precision" / f"probe-{digest}.json"


def default_cache_dir() -> Path:
    """The tunebench cache dir ($TUNEBENCH_CACHE, else ~/.cache/tunebench), where converted models live too."""
    from tunebench.models.load import cache_root

    return cache_root()


@dataclass
class PrecisionChoice:
    """What `auto` picked and why: `gflops` per candidate (measured or cached), those that did not fit memory."""

    picked: str
    gflops: dict[str, float]
    reason: str
    cached: bool = False
    too_big: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(shapes: Sequence[tuple[int, int, int]], names: Sequence[str], timer: Timer,
            rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """GFLOP/s of each precision over `shapes`: 2 m k n flops per matmul, summed over shapes / summed seconds,
    each (precision, shape) timed in `rounds` interleaved rounds and its fastest kept, so a burst of load on a
    shared machine does not fall on one precision only."""
    best: dict[tuple[str, tuple[int, int, int]], float] = {}
    for r in range(rounds):
        for name in names:
            for shape in shapes:
                if r and best[name, shape] >= 10 * PROBE_SECONDS:
                    continue  # slow enough that load cannot change the verdict: not timed again
                seconds = timer(name, shape)
                best[name, shape] = min(seconds, best.get((name, shape), seconds))
    flops = sum(2 * m * k * n for m, k, n in shapes)
    out = {}
    for name in names:
        seconds = sum(best[name, shape] for shape in shapes)
        out[name] = round(flops / seconds / 1e9, 2) if seconds > 0 else float("inf")
    return out


def choose_precision(shapes: Sequence[tuple[int, int, int]], device: torch.device, *, training: bool,
                     n_params: int = 0, budget_bytes: int | None = None, timer: Timer | None = None,
                     cache_dir: Path | None = None) -> PrecisionChoice:
    """`auto`: the fastest candidate precision (`candidates`) over the model's matmul `shapes` whose weights
    (n_params x its bytes per weight) fit `budget_bytes` (default: `memory.available_bytes(device)`).

    The timings come from `timer` (default: `time_matmul` on `device`) or from the cache file for this machine,
    torch version and shape set (`cache_dir`, default the tunebench cache); a new measurement is written there
    atomically. fp32 is the fallback when nothing else fits.
    """
    from tunebench.io import atomic_write_json, read_json
    from tunebench.memory import available_bytes

    names = candidates(device, training=training)
    key = {"schema": CACHE_SCHEMA, "machine": machine_key(device), "shapes": [list(s) for s in shapes],
           "candidates": names}
    path = _cache_file(cache_dir or default_cache_dir(), key)
    gflops: dict[str, float] | None = None
    cached = False
    if path.is_file():
        try:
            stored = read_json(path)
            if isinstance(stored, dict) and stored.get("key") == key and set(stored.get("gflops", {})) == set(names):
                gflops, cached = {k: float(v) for k, v in stored["gflops"].items()}, True
        except Exception:  # an unreadable cache is measured again  # noqa: BLE001
            gflops = None
    if gflops is None:
        timer = timer or (lambda name, shape: time_matmul(name, shape, device))
        gflops = measure(shapes, names, timer)
        try:
            atomic_write_json(path, {"key": key, "gflops": gflops})
        except OSError:  # a read-only cache only costs the next run a probe
            pass
    budget = available_bytes(device) if budget_bytes is None else budget_bytes
    too_big = [n for n in names if n_params * PRECISIONS[n].weight_bytes > budget]
    fitting = [n for n in names if n not in too_big] or [REFERENCE]
    picked = max(fitting, key=lambda n: (gflops.get(n, 0.0), n == REFERENCE))
    shown = ", ".join(f"{n} {gflops[n]:.1f}" for n in names)
    reason = f"fastest on the model's matmul shapes (GFLOP/s: {shown})"
    if too_big:
        reason += f"; {', '.join(too_big)} would not fit {budget / 2**30:.1f} GiB"
    return PrecisionChoice(picked, gflops, reason, cached, too_big)


def resolve_bf16(mode: Literal["auto", "on", "off"], device: torch.device, *, config: Any = None,
                 timer: Timer | None = None, cache_dir: Path | None = None) -> tuple[bool, dict[str, Any]]:
    """train.bf16 -> (use bf16 autocast?, the record for the run summary: mode, picked, and for auto the
    measured GFLOP/s and the reason).

    auto times fp32 and bf16 on the shapes of `config` (a transformers config; without one, a 2048² matmul) and
    takes the faster one that fits memory. 'on' on a GPU without bf16 is a ConfigError.
    """
    import torch

    if mode == "off":
        return False, {"mode": mode, "picked": "fp32", "reason": "train.bf16 is off"}
    if mode == "on":
        if device.type == "cuda" and not bf16_native(device):
            raise ConfigError(f"train.bf16 is 'on' but {torch.cuda.get_device_name(device)} has no bf16: "
                              "set train.bf16 to auto or off")
        return True, {"mode": mode, "picked": "bf16", "reason": "train.bf16 is on"}
    shapes = model_shapes(config) if config is not None else [(2048, 2048, 2048)]
    n_params = parameter_estimate(config) if config is not None else 0
    choice = choose_precision(shapes, device, training=True, n_params=n_params, timer=timer, cache_dir=cache_dir)
    return choice.picked == "bf16", {"mode": mode, **choice.as_dict()}


def precision_variant(model: Any, name: str) -> Any:
    """`model` computing in precision `name`: the model itself when it already does, else a converted copy
    (bf16/fp16: weights cast; int8: dynamic quantization of every nn.Linear, CPU only). ConfigError where the
    precision cannot run on the model's device or this torch lacks dynamic quantization."""
    import copy

    import torch

    if name not in PRECISIONS:
        raise ConfigError(f"precision '{name}' is unknown: use one of {', '.join(PRECISIONS)}")
    device = model.device
    if device.type not in PRECISIONS[name].devices:
        raise ConfigError(f"precision {name} does not run on {device.type}: use "
                          f"{' or '.join(n for n, p in PRECISIONS.items() if device.type in p.devices)}")
    if name == "int8":
        quantize = getattr(getattr(torch, "ao", None), "quantization", None)
        if quantize is None or not hasattr(quantize, "quantize_dynamic"):
            raise ConfigError(f"precision int8 needs torch.ao.quantization.quantize_dynamic, which torch "
                              f"{torch.__version__} lacks: use fp32 or bf16")
        fp32 = precision_variant(model, REFERENCE)
        return quantize.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    dtype = dtype_of(name)
    if all(p.dtype == dtype for p in model.parameters() if p.is_floating_point()):
        return model
    return copy.deepcopy(model).to(dtype)


def model_precision(model: Any) -> str:
    """The precision a model computes in, read from it: int8 when it holds dynamically quantized linears, else
    the dtype of its first floating-point weight."""
    import torch

    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        return "int8"
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
