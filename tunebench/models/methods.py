"""What gets trained, as a table: one `Method` row per fine-tuning method (full, lora, freeze, ...).

Each row says how the method is applied to a loaded model, whether its result can be folded into the base
weights (`mergeable`), how its trained output is saved, recognised and reloaded onto a base, and which run-dir
folder holds it. The trainer, `models/export.py` and model loading for evaluation ask the table (`get_method`,
`method_of_output`) instead of testing method names, so a new method is one `register(...)` call:

- a PEFT method (IA3, prompt tuning, prefix tuning, LoRA variants such as DoRA): `peft_method(name, peft_type,
  build_config, mergeable=...)`, where `build_config(train_cfg, task_type)` returns the PEFT config object;
- a method of our own (e.g. bottleneck adapter layers): a `Method` with its own apply/save/reload/recognises.

PEFT covers LoRA; freeze tuning has no library home, so the block finding is written here: the transformer
blocks are the outermost `nn.ModuleList` of one repeated module class (for encoder-decoders, the decoder's, the
stack nearest the output). Frozen weights may be held in bf16 -- on CPU that roughly halves matmul cost under
bf16 autocast -- while trainable weights always stay float32 so optimizer updates are not lost to rounding.

torch and PEFT are imported inside the functions, so the config can check `train.method` against `METHODS`
without loading them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunebench.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tunebench.config import FreezeConfig, TrainConfig


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: a row of the methods table.

    apply(model, train_cfg) -> the model to train, with `requires_grad` set on what trains (may wrap the model).
    output: the run-dir folder of the trained output. "adapter": only the method's own weights, loaded onto the
      base by `reload`; "model": a whole model that loads in place of the base (`reload` is None).
    mergeable: `merge(model)` folds the method into plain base weights (then generation runs a plain model and
      `export --merge` works); a non-mergeable method is evaluated with its modules attached.
    freezes_base: some base weights stay frozen, so `train.frozen_bf16` may hold them in bf16.
    save(model, out_dir): write the trained weights into `out_dir` (safetensors); the tokenizer is saved by the
      caller. Raises ValueError for a model this method did not produce.
    reload(base, out_dir) -> the base with the saved method attached, in eval mode, not trainable.
    attached(model): whether a loaded model carries this method's modules unmerged (None: the method leaves no
      modules of its own, e.g. a whole model); then `disabled(model)` is a context manager inside which the model
      computes as its base (the KL base of a drift task, with no second copy loaded).
    recognises(out_dir): whether `out_dir` holds this method's saved output (None: it is recognised as another
      row's output, e.g. freeze saves a full model).
    peft_input_casting: the method's layers are PEFT tuner layers whose float32 input cast the trainer may switch
      off during CPU bf16 training (`train/fast_paths.py: keep_lora_input_dtype`).
    default_lr: the AdamW peak learning rate `train.lr` takes when the config leaves it unset (README: "Methods").
    merge_refusal: for an 'adapter' output that is not mergeable, why it cannot be folded into the base weights
      (`export --merge` says so in its refusal); empty otherwise.
    fsdp_needs_orig_params: trainable and frozen weights of this method can sit in the same FSDP unit (a LoRA or
      IA3 layer inside a frozen projection, adapter layers inside a frozen block, a soft prompt or prefix beside
      the frozen embeddings, top blocks or named modules of a frozen model). FSDP1 flattens each unit into one
      parameter of one `requires_grad`, so it can shard such a method only with the original parameters kept
      (Accelerate's `fsdp_use_orig_params: true`); with flat parameters torch refuses the wrap ("Must flatten
      tensors with uniform `requires_grad` when `use_orig_params=False`", torch/distributed/fsdp). PEFT's FSDP
      guide states the same need. FSDP2 and DeepSpeed ZeRO shard parameter by parameter and have no such limit.
      `tests/test_fsdp_methods.py` checks each row against torch's FSDP on two CPU processes.
    """

    name: str
    description: str
    apply: Callable[[Any, TrainConfig], Any]
    output: Literal["adapter", "model"]
    mergeable: bool
    freezes_base: bool
    save: Callable[[Any, Path], None]
    reload: Callable[[Any, Path], Any] | None = None
    recognises: Callable[[Path], bool] | None = None
    attached: Callable[[Any], bool] | None = None
    disabled: Callable[[Any], AbstractContextManager[Any]] | None = None
    merge: Callable[[Any], Any] | None = None
    peft_input_casting: bool = False
    default_lr: float = 2e-4
    fsdp_needs_orig_params: bool = True
    merge_refusal: str = ""

    def __post_init__(self) -> None:
        if self.mergeable != (self.merge is not None):
            raise ValueError(f"method '{self.name}': mergeable={self.mergeable} needs merge to be "
                             f"{'given' if self.mergeable else 'None'}")
        if (self.output == "adapter") != (self.reload is not None):
            raise ValueError(f"method '{self.name}': an 'adapter' output needs reload, a 'model' output none")
        if (self.attached is None) != (self.disabled is None):
            raise ValueError(f"method '{self.name}': attached and disabled go together")
        if bool(self.merge_refusal) != (self.output == "adapter" and not self.mergeable):
            raise ValueError(f"method '{self.name}': merge_refusal says why an unmergeable adapter cannot be merged, "
                             "and only that")


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a row to the table (a later row with the same name replaces the earlier one)."""
    METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """Every registered method name, in registration order."""
    return list(METHODS)


def get_method(name: str) -> Method:
    """The row named `name`; ModelError naming `train.method` and the known names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ModelError(f"train.method '{name}' is unknown: use one of {', '.join(METHODS)}") from None


def method_of_output(out_dir: Path) -> Method | None:
    """The method whose saved output `out_dir` holds (the last registered row that recognises it), or None.

    Later rows win, so a variant registered after its general form (DoRA after LoRA) is the one reported.
    """
    found = None
    for method in METHODS.values():
        if method.recognises is not None and method.recognises(out_dir):
            found = method
    return found


def attached_method(model: Any) -> Method | None:
    """The method whose modules `model` carries unmerged (a PEFT adapter, bottleneck adapter layers), or None for
    a plain model (a base, a merged adapter, a full fine-tune). Asks each row's `attached`, so a new method's
    row is all it takes for benchmarks to tell an adapter and to disable it for the KL base."""
    for method in METHODS.values():
        if method.attached is not None and method.attached(model):
            return method
    return None


# ---------------------------------------------------------------- shared helpers


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights count once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Hold frozen floating-point weights in `dtype`; returns how many parameters were cast."""
    cast = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast += p.numel()
    return cast


def apply_method(model: Any, train_cfg: TrainConfig, *, frozen_dtype: torch.dtype | None = None) -> Any:
    """Set what trains for `train_cfg.method`; returns the model to train (a PeftModel for PEFT methods).

    Trainable weights are made float32 whatever the load dtype; frozen ones are cast to `frozen_dtype` if given
    (bf16 frozen weights need the forward pass under bf16 autocast, as the training loop runs it).
    Raises ModelError for an unknown method or settings that do not fit the model.
    """
    import torch

    model = get_method(train_cfg.method).apply(model, train_cfg)
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    if frozen_dtype is not None:
        cast_frozen(model, frozen_dtype)
    return model


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


# ---------------------------------------------------------------- whole models: full, freeze


def _save_model(model: Any, out_dir: Path) -> None:
    if _is_peft(model):
        raise ValueError(f"a whole-model method cannot save a {type(model).__name__}")
    model.save_pretrained(out_dir)


def _is_model_dir(out_dir: Path) -> bool:
    return (out_dir / "config.json").is_file() and not (out_dir / "adapter_config.json").is_file()


def _full(model: Any, train_cfg: TrainConfig) -> Any:
    model.requires_grad_(True)
    return model


def block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks nearest the output: (qualified name, ModuleList). ModelError when none."""
    from tunebench.models.bottleneck import block_stacks

    stacks = block_stacks(model)
    if not stacks:
        raise ModelError(
            f"train.method 'freeze': no transformer blocks found in {type(model).__name__}; use lora or full"
        )
    decoders = [s for s in stacks if "decoder" in s[0]]
    if decoders:
        return decoders[-1]
    return max(stacks, key=lambda s: sum(p.numel() for p in s[1].parameters()))


def _freeze_blocks(model: nn.Module, cfg: FreezeConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.trainable_top_k:
        name, blocks = block_stack(model)
        if cfg.trainable_top_k > len(blocks):
            raise ModelError(
                f"train.freeze.trainable_top_k is {cfg.trainable_top_k} but {name} has only {len(blocks)} "
                "blocks: lower it"
            )
        for block in list(blocks)[-cfg.trainable_top_k :]:
            block.requires_grad_(True)
    for pattern in cfg.trainable_modules:
        matched = [m for n, m in model.named_modules() if n and pattern in n]
        if not matched:
            examples = ", ".join(n for n, _ in list(model.named_children())[:4])
            raise ModelError(
                f"train.freeze.trainable_modules: '{pattern}' matches no module name (top level: {examples})"
            )
        for module in matched:
            module.requires_grad_(True)


def _freeze(model: Any, train_cfg: TrainConfig) -> Any:
    _freeze_blocks(model, train_cfg.freeze)
    return model


# ---------------------------------------------------------------- PEFT methods


def _task_type(model: Any) -> Any:
    from peft import TaskType

    return TaskType.SEQ_2_SEQ_LM if getattr(model.config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM


def _adapter_meta(out_dir: Path) -> dict[str, Any] | None:
    """adapter_config.json as a dict ({} when unreadable); None when there is no such file."""
    path = out_dir / "adapter_config.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _embeddings_adapted(model: Any) -> bool:
    """Whether an adapter layer wraps an embedding or output projection (then PEFT saves those layers too)."""
    from peft.utils.other import EMBEDDING_LAYER_NAMES

    return any(hasattr(m, "lora_A") and name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES
               for name, m in model.named_modules())


def _save_peft(model: Any, out_dir: Path) -> None:
    if not _is_peft(model):
        raise ValueError(f"a PEFT method cannot save a {type(model).__name__}")
    # tunebench never resizes the vocabulary, so PEFT's "auto" check (which looks the base model up on the Hub to
    # compare vocabulary sizes) can only ever conclude "embeddings unchanged" unless an adapter targets them.
    model.save_pretrained(out_dir, save_embedding_layers=_embeddings_adapted(model))


def _reload_peft(base: Any, out_dir: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(out_dir), is_trainable=False)


def _disabled_peft(model: Any) -> AbstractContextManager[Any]:
    return model.disable_adapter()


def _merge_peft(model: Any) -> Any:
    return model.merge_and_unload()


def peft_method(
    name: str,
    peft_type: str,
    build_config: Callable[[TrainConfig, Any], Any],
    *,
    mergeable: bool,
    description: str,
    settings_key: str | None = None,
    peft_input_casting: bool = False,
    saved_as: Callable[[dict[str, Any]], bool] | None = None,
    default_lr: float = 2e-4,
    save: Callable[[Any, Path], None] | None = None,
    merge_refusal: str = "",
) -> Method:
    """A row for a PEFT method: `build_config(train_cfg, task_type)` returns its PEFT config (e.g. IA3Config).

    The adapter is saved by PEFT's `save_pretrained` (adapter_config.json + adapter_model.safetensors),
    recognised by adapter_config.json's `peft_type` (LORA when the file omits it) and, for a variant that shares
    its type (DoRA: LORA with `use_dora`), by `saved_as(adapter_config)`; reloaded with
    `PeftModel.from_pretrained` and, when `mergeable`, merged with `merge_and_unload`. `settings_key` names the
    train config section whose target modules a ValueError from PEFT is reported against; `save` replaces
    PEFT's plain `save_pretrained`; `merge_refusal` (not `mergeable`): why it cannot be merged. A method PEFT refuses for the architecture (its NotImplementedError /
    TypeError, or `build_config`'s ConfigError) is a ConfigError (exit 2) naming `train.method`.
    """
    key = settings_key or name

    def recognises(out_dir: Path) -> bool:
        meta = _adapter_meta(out_dir)
        if meta is None or (meta.get("peft_type") or "LORA") != peft_type:
            return False
        return saved_as is None or bool(saved_as(meta))

    def apply(model: Any, train_cfg: TrainConfig) -> Any:
        from peft import get_peft_model

        peft_cfg = build_config(train_cfg, _task_type(model))
        try:
            return get_peft_model(model, peft_cfg)
        except (NotImplementedError, TypeError, AttributeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"train.method '{name}': PEFT cannot apply it to {type(model).__name__} ({reason}); "
                              "choose another method") from None
        except ValueError as exc:
            reason = (str(exc).strip().splitlines() or ["no match"])[0]
            section = getattr(train_cfg, key, None)
            targets = getattr(section, "target_modules", None)
            if targets is None:  # nothing the user named: PEFT refuses the method for this architecture
                raise ConfigError(f"train.method '{name}': PEFT cannot apply it to {type(model).__name__} "
                                  f"({reason}); choose another method") from None
            raise ModelError(f"train.{key}.target_modules {targets!r} does not fit this model ({reason})") from None

    def attached(model: Any) -> bool:
        config = getattr(model, "active_peft_config", None)
        return config is not None and _is_peft(model) and config.peft_type == peft_type  # PeftType is a str enum

    return Method(
        name=name, description=description, apply=apply, output="adapter", mergeable=mergeable, freezes_base=True,
        save=save or _save_peft, reload=_reload_peft, recognises=recognises, attached=attached,
        disabled=_disabled_peft,
        merge=_merge_peft if mergeable else None, peft_input_casting=peft_input_casting, default_lr=default_lr,
        fsdp_needs_orig_params=True,  # every PEFT tuner trains new weights inside or beside frozen modules
        merge_refusal=merge_refusal,
    )


PRINCIPAL_INITS = ("pissa", "olora")  # LoRA initialisations that move the base weights (residual = W - BA)


def _lora_config(train_cfg: TrainConfig, task_type: Any) -> Any:
    from peft import LoraConfig

    lora = train_cfg.lora
    init = True if lora.init_lora_weights == "default" else lora.init_lora_weights
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      use_dora=lora.use_dora, use_rslora=lora.use_rslora, init_lora_weights=init, task_type=task_type)


def _apply_lora(model: Any, train_cfg: TrainConfig) -> Any:
    """LoRA through PEFT; with PiSSA / OLoRA, also keep the initial adapter so the saved one fits the original base.

    PiSSA (Meng et al. 2024) and OLoRA start A and B from the weights' principal directions and leave W - BA in
    the base. PEFT's documented recipe (`save_pretrained(path_initial_model_for_weight_conversion=...)`) turns the
    trained adapter into a rank-2r LoRA that applies to the untouched base; it needs the initial A and B, written
    here right after initialisation (the same seed gives the same start again on resume).
    """
    import shutil
    import tempfile
    import weakref

    model = _LORA_ROW.apply(model, train_cfg)
    if str(train_cfg.lora.init_lora_weights).startswith(PRINCIPAL_INITS):
        initial = Path(tempfile.mkdtemp(prefix="tunebench-lora-init-"))
        peft_cfg = model.peft_config["default"]
        chosen, peft_cfg.init_lora_weights = peft_cfg.init_lora_weights, True
        try:
            model.save_pretrained(initial, save_embedding_layers=False)
        finally:
            peft_cfg.init_lora_weights = chosen
        model._tunebench_initial_adapter = initial
        weakref.finalize(model, shutil.rmtree, str(initial), True)
    return model


def _save_lora(model: Any, out_dir: Path) -> None:
    initial = getattr(model, "_tunebench_initial_adapter", None)
    if initial is None:
        return _save_peft(model, out_dir)
    model.save_pretrained(out_dir, save_embedding_layers=_embeddings_adapted(model),
                          path_initial_model_for_weight_conversion=str(initial))


def _ia3_config(train_cfg: TrainConfig, task_type: Any) -> Any:
    """IA3 (Liu et al. 2022, arXiv:2205.05638); PEFT knows default target modules for common architectures only."""
    from peft import IA3Config

    ia3 = train_cfg.ia3
    return IA3Config(target_modules=ia3.target_modules, feedforward_modules=ia3.feedforward_modules,
                     task_type=task_type)


def _check_ia3_targets(model: Any, train_cfg: TrainConfig) -> Any:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(model.config, "model_type", None)
    if train_cfg.ia3.target_modules is None and model_type not in DEFAULTS:
        raise ConfigError(f"train.ia3.target_modules: PEFT has no default IA3 modules for model type '{model_type}'; "
                          "set train.ia3.target_modules and train.ia3.feedforward_modules")
    return _IA3_ROW.apply(model, train_cfg)


def _prompt_tuning_config(train_cfg: TrainConfig, task_type: Any) -> Any:
    """Prompt tuning (Lester et al. 2021, arXiv:2104.08691): trainable soft-prompt vectors before the input."""
    from peft import PromptTuningConfig, PromptTuningInit

    pt = train_cfg.prompt_tuning
    init = PromptTuningInit.SAMPLE_VOCAB if pt.init == "sample_vocab" else PromptTuningInit.RANDOM
    return PromptTuningConfig(num_virtual_tokens=pt.num_virtual_tokens, prompt_tuning_init=init, task_type=task_type)


def _prefix_tuning_config(train_cfg: TrainConfig, task_type: Any) -> Any:
    """Prefix tuning (Li and Liang 2021, arXiv:2101.00190): trainable keys and values before every layer's own."""
    from peft import PrefixTuningConfig

    pt = train_cfg.prefix_tuning
    return PrefixTuningConfig(num_virtual_tokens=pt.num_virtual_tokens, prefix_projection=pt.prefix_projection,
                              encoder_hidden_size=pt.encoder_hidden_size, task_type=task_type)


def prepended_positions(model: Any) -> int:
    """Positions a soft prompt adds in front of a causal model's input (its logits come first); 0 otherwise.

    Prompt tuning on a decoder-only model prepends `num_virtual_tokens` embeddings, so the output has that many
    more positions; prefix tuning adds keys and values only, and seq2seq prompt tuning lengthens only the encoder.
    """
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning or getattr(model.config, "is_encoder_decoder", False):
        return 0
    return 0 if str(config.peft_type).endswith("PREFIX_TUNING") else int(config.num_virtual_tokens)


def uses_prompt_learning(model: Any) -> bool:
    """Whether `model` is a PEFT prompt-learning model (prompt or prefix tuning), whose forward supplies its own
    KV cache or input embeddings: incremental decoding and prefix-cached scoring cannot run it."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


# ---------------------------------------------------------------- bottleneck adapters (our own module)


def _apply_bottleneck(model: Any, train_cfg: TrainConfig) -> Any:
    from tunebench.models.bottleneck import add_bottleneck_adapters

    add_bottleneck_adapters(model, train_cfg.adapter)
    return model


def _save_bottleneck(model: Any, out_dir: Path) -> None:
    from tunebench.models.bottleneck import save_bottleneck

    save_bottleneck(model, out_dir)


def _reload_bottleneck(base: Any, out_dir: Path) -> Any:
    from tunebench.models.bottleneck import load_bottleneck

    return load_bottleneck(base, out_dir).eval()


def _bottleneck_attached(model: Any) -> bool:
    return bool(getattr(model, "_bottleneck_handles", None))  # tunebench.models.bottleneck.has_bottleneck_adapters


def _disabled_bottleneck(model: Any) -> AbstractContextManager[Any]:
    from tunebench.models.bottleneck import adapters_disabled

    return adapters_disabled(model)


def _is_bottleneck_dir(out_dir: Path) -> bool:
    return (out_dir / "bottleneck_config.json").is_file()  # tunebench.models.bottleneck.CONFIG_FILE


# ---------------------------------------------------------------- the table
# default_lr: full-weight methods move every weight of a pre-trained model and need a far smaller rate (2e-5,
# the Alpaca / FLAN recipes) than methods that train a few new parameters from a neutral start.

register(Method(
    name="full", description="every weight trains", apply=_full, output="model", mergeable=False,
    freezes_base=False, save=_save_model, recognises=_is_model_dir, default_lr=2e-5, fsdp_needs_orig_params=False,
))
_LORA_ROW = peft_method(
    "lora", "LORA", _lora_config, mergeable=True, peft_input_casting=True, default_lr=2e-4, save=_save_lora,
    description="low-rank adapters on the target projections (Hu et al. 2021, arXiv:2106.09685), through PEFT; "
    "variants by train.lora keys: use_dora, use_rslora, init_lora_weights (pissa, olora, ...)",
)
register(replace(_LORA_ROW, apply=_apply_lora))
register(Method(
    name="freeze", description="only the top transformer blocks and named modules train", apply=_freeze,
    output="model", mergeable=False, freezes_base=True, save=_save_model, default_lr=2e-5,
    fsdp_needs_orig_params=True,
))
register(Method(
    name="adapter", description="bottleneck adapter layers, Houlsby or Pfeiffer placement (models/bottleneck.py)",
    apply=_apply_bottleneck, output="adapter", mergeable=False, freezes_base=True, save=_save_bottleneck,
    reload=_reload_bottleneck, recognises=_is_bottleneck_dir, attached=_bottleneck_attached,
    disabled=_disabled_bottleneck, default_lr=1e-4, fsdp_needs_orig_params=True,
    merge_refusal="bottleneck adapters add layers, with a non-linearity, that no base weight can absorb",
))
_IA3_ROW = peft_method(
    "ia3", "IA3", _ia3_config, mergeable=True, default_lr=3e-3,
    description="learned rescaling of attention keys, values and feed-forward activations (Liu et al. 2022), "
    "through PEFT",
)
register(replace(_IA3_ROW, apply=_check_ia3_targets))
register(peft_method(
    "prompt_tuning", "PROMPT_TUNING", _prompt_tuning_config, mergeable=False, default_lr=3e-2,
    merge_refusal="its soft prompt is extra input vectors, not a change of any base weight",
    description="trainable soft-prompt vectors before the input (Lester et al. 2021), through PEFT",
))
register(peft_method(
    "prefix_tuning", "PREFIX_TUNING", _prefix_tuning_config, mergeable=False, default_lr=1e-2,
    merge_refusal="its prefixes are extra keys and values in every layer, not a change of any base weight",
    description="trainable key/value prefixes in every attention layer (Li and Liang 2021), through PEFT",
))
