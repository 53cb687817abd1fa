"""Bottleneck adapter layers (method `adapter`): small trainable layers added inside a frozen transformer.

Each adapter is `h + up(act(down(h)))` on a sub-layer's output `h` (hidden size d), before the residual sum:
`down` maps d -> m = floor(d / reduction_factor), `up` maps m -> d and starts at zero, so a fresh adapter is the
identity and the model's outputs are unchanged until training moves it (Houlsby et al. 2019, "Parameter-Efficient
Transfer Learning for NLP", section 2.1: near-identity initialisation). Placement:
- `houlsby`: after the attention sub-layer and after the feed-forward sub-layer of every block (Houlsby et al.
  2019, figure 2);
- `pfeiffer`: after the feed-forward sub-layer only (Pfeiffer et al. 2021, "AdapterFusion", section 3.1: one
  adapter per block after the feed-forward output is as good at half the parameters).
Encoder-decoder models get adapters in every encoder and decoder block (decoder cross-attention is left as is).

Why our own code: PEFT (0.21) has no bottleneck adapters, and the `adapters` library (1.3) pins
`transformers ~= 4.57` while tunebench runs on transformers 5. So this module does the small part we need: find
the blocks, hook the sub-layer outputs (forward hooks, so the base model's modules and parameter names stay as they
are), and save/reload the adapter weights as safetensors plus a JSON config.

Blocks are found by the model's architecture: the block stacks are the outermost `nn.ModuleList`s of one repeated
module class (encoder and decoder stacks both), and a block's sub-layers are looked up in `SUBLAYER_LAYOUTS`, one
row per architecture family. The adapter modules are attached to their block as `attention_adapter` and
`ffn_adapter`, so they are ordinary parameters of the model (optimizer, `.to(device)`, checkpoints see them).
Adapters add layers: nothing folds them into the base weights, so a merged export is refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunebench.config import AdapterConfig
from tunebench.errors import ConfigError, ModelError

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
FORMAT_VERSION = 1
SITE_NAMES = {"attention": "attention_adapter", "ffn": "ffn_adapter"}


@dataclass(frozen=True)
class SublayerLayout:
    """Where a block's attention and feed-forward sub-layers sit (dotted paths from the block; -1 = last item).

    Each path names the module whose output is the sub-layer's output before the residual sum.
    """

    attention: str
    ffn: str
    families: str


SUBLAYER_LAYOUTS: tuple[SublayerLayout, ...] = (
    SublayerLayout("self_attn", "mlp", "Llama family (Llama, SmolLM, Mistral, Qwen2, Gemma, Phi-3)"),
    SublayerLayout("attn", "mlp", "GPT-2 (GPT-Neo, GPT-J)"),
    SublayerLayout("layer.0.SelfAttention", "layer.-1.DenseReluDense", "T5, FLAN-T5, mT5"),
    SublayerLayout("self_attn", "fc2", "BART, mBART, Marian, OPT"),
)


class BottleneckAdapter(nn.Module):
    """`h + up(act(down(h)))`, with `up` initialised to zero (identity at the start).

    `down` keeps nn.Linear's default (Kaiming-uniform) initialisation, as LoRA's A matrix does: with `up` at zero,
    a non-zero `down` is what gives `up` a gradient at the first step.
    """

    def __init__(self, hidden_size: int, bottleneck_size: int, non_linearity: str) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = ACT2FN[non_linearity]
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True  # False inside `adapters_disabled`: the hook passes the sub-layer output through

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (..., hidden_size) in any float dtype; returns the same shape and dtype."""
        x = hidden
        if not torch.is_autocast_enabled(hidden.device.type):
            x = hidden.to(self.down.weight.dtype)  # bf16 frozen model, float32 adapter, no autocast
        return hidden + self.up(self.act(self.down(x))).to(hidden.dtype)

    def output_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Forward hook on a sub-layer: apply the adapter to its output (the first item when it returns a tuple)."""
        if not self.enabled:
            return output
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)


def _submodule(root: nn.Module, dotted: str) -> nn.Module | None:
    """`root.a.0.b` by a dotted path (negative list indices allowed); None when any step is missing."""
    node: Any = root
    for part in dotted.split("."):
        if isinstance(node, nn.ModuleList) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(node) <= index < len(node):
                return None
            node = node[index]
        else:
            node = getattr(node, part, None)
        if not isinstance(node, nn.Module):
            return None
    return node


def block_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every outermost `nn.ModuleList` of one repeated, parameter-holding module class: (qualified name, list).

    For a decoder-only model that is its one block stack; for an encoder-decoder, the encoder's and the decoder's.
    """
    stacks: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in stacks):
            continue  # a list inside a block (sub-layers, experts) is not a block stack
        if len({type(m) for m in module}) == 1 and next(module.parameters(), None) is not None:
            stacks.append((name, module))
    return stacks


def _layout(block: nn.Module) -> SublayerLayout | None:
    for layout in SUBLAYER_LAYOUTS:
        if _submodule(block, layout.attention) is not None and _submodule(block, layout.ffn) is not None:
            return layout
    return None


def _hidden_size(model: nn.Module) -> int:
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(size, int) or size <= 0:
        raise ConfigError(
            f"train.method 'adapter': {type(model).__name__} has no config.hidden_size to size the adapters; "
            "use lora or full"
        )
    return size


def bottleneck_size(hidden_size: int, cfg: AdapterConfig) -> int:
    """floor(hidden_size / reduction_factor); ConfigError (exit 2) naming the key when that is below one unit."""
    size = int(hidden_size // cfg.reduction_factor)
    if size < 1:
        raise ConfigError(
            f"train.adapter.reduction_factor {cfg.reduction_factor:g} leaves {hidden_size / cfg.reduction_factor:.2f} "
            f"hidden units for hidden size {hidden_size}: use at most {hidden_size}"
        )
    return size


def add_bottleneck_adapters(model: nn.Module, cfg: AdapterConfig, *, freeze_base: bool = True) -> list[str]:
    """Freeze the model (unless `freeze_base=False`) and add trainable adapters in place, as `cfg` says.

    Returns the qualified names of the adapter modules added, in model order: Houlsby gives 2 per block, Pfeiffer 1.
    The adapters are float32 on the device of their block. Raises ConfigError (exit 2) naming `train.method` when
    the model has no block whose sub-layers `SUBLAYER_LAYOUTS` recognises, or `train.adapter.reduction_factor`
    when the bottleneck would have no hidden unit; and ModelError if the model already carries adapters.
    """
    if getattr(model, "_bottleneck_handles", None):
        raise ModelError(f"{type(model).__name__} already has bottleneck adapters; load a fresh base model")
    hidden = _hidden_size(model)
    size = bottleneck_size(hidden, cfg)
    sites: list[tuple[str, nn.Module, str, nn.Module]] = []  # (block name, block, site, hooked sub-layer)
    for stack_name, stack in block_stacks(model):
        for i, block in enumerate(stack):
            layout = _layout(block)
            if layout is None:
                continue
            wanted = ("attention", "ffn") if cfg.style == "houlsby" else ("ffn",)
            for site in wanted:
                sublayer = _submodule(block, getattr(layout, site))
                assert sublayer is not None  # _layout checked both paths
                sites.append((f"{stack_name}.{i}", block, site, sublayer))
    if not sites:
        known = "; ".join(f"{lay.families}: {lay.attention} + {lay.ffn}" for lay in SUBLAYER_LAYOUTS)
        raise ConfigError(
            f"train.method 'adapter': no transformer block of {type(model).__name__} has attention and "
            f"feed-forward sub-layers tunebench recognises ({known}); use lora or full"
        )
    if freeze_base:
        model.requires_grad_(False)
    handles = []
    names = []
    for block_name, block, site, sublayer in sites:
        device = next(block.parameters()).device
        adapter = BottleneckAdapter(hidden, size, cfg.non_linearity).to(device=device, dtype=torch.float32)
        block.add_module(SITE_NAMES[site], adapter)
        handles.append(sublayer.register_forward_hook(adapter.output_hook))
        names.append(f"{block_name}.{SITE_NAMES[site]}")
    model._bottleneck_handles = handles  # type: ignore[assignment]  # a plain attribute, not a module
    model._bottleneck_config = {"style": cfg.style, "reduction_factor": cfg.reduction_factor,
                                "non_linearity": cfg.non_linearity, "hidden_size": hidden,
                                "bottleneck_size": size, "adapters": names}  # type: ignore[assignment]
    return names


def has_bottleneck_adapters(model: nn.Module) -> bool:
    return bool(getattr(model, "_bottleneck_handles", None))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model` computes as its base: every bottleneck adapter passes its input through (as PEFT's
    `disable_adapter`); restored on exit, also after an exception."""
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    before = [a.enabled for a in adapters]
    for a in adapters:
        a.enabled = False
    try:
        yield model
    finally:
        for a, state in zip(adapters, before, strict=True):
            a.enabled = state


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter parameters by qualified name (float32, detached, contiguous)."""
    prefixes = tuple(f"{name}." for name in model._bottleneck_config["adapters"])
    return {name: p.detach().float().contiguous() for name, p in model.named_parameters() if name.startswith(prefixes)}


def save_bottleneck(model: nn.Module, out_dir: Path) -> None:
    """Write the adapter weights (safetensors, float32) and their JSON config into `out_dir` (created if missing).

    Not atomic by itself: `models/export.py: save_trained` writes into a temporary dir and renames it.
    Raises ValueError for a model without bottleneck adapters.
    """
    from safetensors.torch import save_file

    if not has_bottleneck_adapters(model):
        raise ValueError(f"save_bottleneck: {type(model).__name__} has no bottleneck adapters")
    meta = {"format": FORMAT_VERSION, "method": "adapter", **model._bottleneck_config,
            "base_model_name_or_path": getattr(model, "name_or_path", None)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def is_bottleneck_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_bottleneck_config(adapter_dir: Path) -> dict[str, Any]:
    """The JSON config saved with an adapter; ModelError naming the file when unreadable."""
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        AdapterConfig(style=meta["style"], reduction_factor=meta["reduction_factor"],
                      non_linearity=meta["non_linearity"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not a readable bottleneck adapter config ({exc})") from None
    return meta


def load_bottleneck(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """Add the adapters saved in `adapter_dir` to the base `model` and load their weights; returns `model`.

    ModelError (exit 1) naming the directory when the adapters do not fit the model (other blocks or sizes).
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    meta = read_bottleneck_config(adapter_dir)
    cfg = AdapterConfig(style=meta["style"], reduction_factor=meta["reduction_factor"],
                        non_linearity=meta["non_linearity"])
    hidden = _hidden_size(model)
    if meta.get("hidden_size") != hidden:
        raise ModelError(f"adapter '{adapter_dir}' does not fit this model (saved for hidden size "
                         f"{meta.get('hidden_size')}, the model has {hidden})")
    try:
        names = add_bottleneck_adapters(model, cfg)
    except ConfigError as exc:
        raise ModelError(f"adapter '{adapter_dir}' does not fit this model ({exc})") from None
    saved = load_file(str(adapter_dir / WEIGHTS_FILE))
    params = dict(model.named_parameters())
    expected = {n for n in params if any(n.startswith(f"{a}.") for a in names)}
    if saved.keys() != expected or names != meta.get("adapters", names):
        missing, extra = sorted(expected - saved.keys())[:2], sorted(saved.keys() - expected)[:2]
        raise ModelError(f"adapter '{adapter_dir}' does not fit this model (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for name, tensor in saved.items():
            if tensor.shape != params[name].shape:
                raise ModelError(f"adapter '{adapter_dir}' does not fit this model ('{name}' has shape "
                                 f"{tuple(tensor.shape)}, the model {tuple(params[name].shape)})")
            params[name].copy_(tensor)
    return model
