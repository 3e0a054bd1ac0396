"""Parameter-efficient fine-tuning: which tensors of a model a run trains, and how they are saved and loaded.

``--peft`` chooses (see docs/peft.md):

* ``lora``: LoRA adapters built with the ``peft`` library (``LoraConfig``): rank ``lora_r``, scale
  ``lora_alpha / lora_r`` (``lora_alpha`` defaults to ``2 * lora_r``), on ``lora_targets`` (default: the
  attention query and value projections, from peft's own per-architecture table: ``q_proj,v_proj`` for
  Llama, Qwen2 and OPT, ``c_attn`` for GPT-2). ``lora_dropout`` must be 0 (see :meth:`AdapterSpec.validate`);
* ``prefix``: prefix tuning with ``peft`` (``PrefixTuningConfig``), ``prefix_tokens`` virtual tokens;
* ``norms``: the model's own norm weights and biases: every parameter with ``ndim <= 1`` (the
  ``"vector"`` kind of :mod:`pertnn.blocks`: LayerNorm/RMSNorm weights and biases, and the linear layers'
  biases where the architecture has them), selected by ``requires_grad``; no peft wrapper.

Everything else is frozen (``requires_grad=False``). The ZO engine perturbs and updates exactly the
tensors with ``requires_grad`` (:func:`pertnn.blocks.trainable_tensors`), so every method trains only the
adapter, and the frozen base weights are never written. The adapter's description for the tuner artifact
is :func:`pertnn.blocks.adapter_config`.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from finetune.common.errors import ZotuneError, first_line

PEFT_METHODS = ("lora", "prefix", "norms")
NORMS_FILE = "norms.safetensors"


@dataclass(frozen=True)
class AdapterSpec:
    """What ``--peft`` and its options ask for (the same field names in ``FinetuneConfig`` and ``MetaConfig``)."""

    peft: str | None = None            # None: the full model
    lora_r: int = 8
    lora_alpha: float | None = None    # None: 2 * lora_r
    lora_dropout: float = 0.0
    lora_targets: str | None = None    # comma-separated module names; None: the architecture's default
    prefix_tokens: int = 10

    @classmethod
    def of(cls, config) -> "AdapterSpec":
        """The spec held by ``config`` (any object with these field names, e.g. a ``FinetuneConfig``)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    @property
    def alpha(self) -> float:
        return float(2 * self.lora_r if self.lora_alpha is None else self.lora_alpha)

    def validate(self) -> None:
        if self.peft is not None and self.peft not in PEFT_METHODS:
            raise ZotuneError(f"unknown --peft {self.peft!r}; use one of {', '.join(PEFT_METHODS)}")
        if self.lora_r < 1 or self.prefix_tokens < 1 or not self.alpha > 0:
            raise ZotuneError("need --lora-r >= 1, --lora-alpha > 0 and --prefix-tokens >= 1")
        if self.lora_dropout != 0:
            raise ZotuneError(f"--lora-dropout must be 0 for ZO (got {self.lora_dropout:g}): the model runs in eval "
                              "mode, where dropout is off, and with it on the two SPSA passes would see different masks")
        if self.lora_targets is not None and not self.targets():
            raise ZotuneError("--lora-targets is empty; give module names such as q_proj,v_proj")

    def targets(self) -> list[str] | None:
        if self.lora_targets is None:
            return None
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


# options that only some --peft methods take -> those methods
PEFT_FLAGS = {"lora_r": "lora", "lora_alpha": "lora", "lora_dropout": "lora", "lora_targets": "lora",
              "prefix_tokens": "prefix"}


def check_flags(peft: str | None, given: dict) -> None:
    """An adapter option given without its ``--peft`` method is a mistake (``given``: option -> value or None)."""
    for name, method in PEFT_FLAGS.items():
        if given.get(name) is not None and peft != method:
            raise ZotuneError(f"--{name.replace('_', '-')} applies to --peft {method}, not "
                              f"{'the full model (no --peft)' if peft is None else '--peft ' + peft}")


def default_targets(model: nn.Module) -> list[str]:
    """The attention query and value projections of ``model``'s architecture, from peft's own table."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TABLE

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TABLE:
        raise ZotuneError(f"no default LoRA targets for model type {model_type!r}; name the modules with "
                          "--lora-targets (for example q_proj,v_proj)")
    return list(TABLE[model_type])


def apply_peft(model: nn.Module, spec: AdapterSpec, seed: int = 0, head_tokens: Sequence[int] = ()) -> nn.Module:
    """``model`` with only the adapter of ``spec`` trainable: a ``peft`` model for lora and prefix (its
    initialisation seeded by ``seed``, the global RNG untouched), the model itself for norms and for no
    adapter. The result is in eval mode.

    ``head_tokens`` (lora only; for a head step, :mod:`finetune.head`): the output head's rows of these tokens
    become part of the adapter, with peft's ``trainable_token_indices``. Where the model ties its head to the
    input embedding, peft adds them to the embedding and the head follows; else to the head alone."""
    spec.validate()
    if head_tokens and spec.peft != "lora":
        raise ZotuneError(f"the head step moves output-head rows, which --peft {spec.peft} keeps frozen; use --peft "
                          "lora (its adapter then carries the rows) or drop the head step")
    if spec.peft is None:
        return model
    if spec.peft == "norms":
        for p in model.parameters():
            p.requires_grad_(p.ndim <= 1)
        model.zotune_adapter = {"method": "norms"}  # read by pertnn.blocks.adapter_config
        return model.eval()
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    if spec.peft == "lora":
        from transformers.pytorch_utils import Conv1D

        targets = spec.targets() or default_targets(model)
        leaves = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules()}
        conv1d = any(isinstance(leaves.get(t), Conv1D) for t in targets)  # GPT-2 stores weights transposed
        tokens = None
        if head_tokens:
            head = model.get_output_embeddings()
            tied = head is not None and head.weight is model.get_input_embeddings().weight
            tokens = list(head_tokens) if tied else {next(n for n, m in model.named_modules() if m is head):
                                                     list(head_tokens)}
        config = LoraConfig(r=spec.lora_r, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules=targets,
                            fan_in_fan_out=conv1d, task_type=TaskType.CAUSAL_LM, trainable_token_indices=tokens)
    else:
        config = PrefixTuningConfig(num_virtual_tokens=spec.prefix_tokens, task_type=TaskType.CAUSAL_LM)
    devices = [model.device] if getattr(model, "device", torch.device("cpu")).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations that peft still calls
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, config)
        except (ValueError, TypeError) as e:
            raise ZotuneError(f"cannot build the {spec.peft} adapter: {first_line(e)}") from None
    return peft_model.eval()


def snapshot_weights(model: nn.Module) -> dict:
    """The weights a resumable snapshot must keep: with frozen parameters (an adapter), the trainable tensors
    only, so that a snapshot is adapter-sized (the frozen base is loaded again on resume, and the run's input
    fingerprint checks it is the same); else the whole ``state_dict``."""
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return model.state_dict()
    return {n: p.detach() for n, p in params.items() if p.requires_grad}


def load_snapshot_weights(model: nn.Module, state: dict) -> None:
    """Load what :func:`snapshot_weights` kept (or a whole ``state_dict``) into ``model``; a RuntimeError if
    it does not fit."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) == trainable and set(state) != set(model.state_dict()):
        missing = model.load_state_dict(state, strict=False).missing_keys
        if trainable & set(missing):
            raise RuntimeError(f"the snapshot misses {sorted(trainable & set(missing))[0]}")
    else:
        model.load_state_dict(state)


def is_peft_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "peft_config", None), dict)


def save_trained(model: nn.Module, tokenizer, folder: Path, merge: bool = False) -> Path:
    """Write what a run trained into ``folder`` and return the path written:

    * a peft model: ``folder/adapter`` in peft's own format (``adapter_config.json``,
      ``adapter_model.safetensors``; ``PeftModel.from_pretrained(base, path)`` loads it), or with ``merge``
      the merged full model in ``folder/model`` (LoRA only);
    * norms: ``folder/adapter/norms.safetensors`` (the trained tensors by parameter name; :func:`load_trained`
      loads it into a base model), or with ``merge`` the full model in ``folder/model``;
    * the full model: ``folder/model``.

    The tokenizer is saved next to it. ``merge`` changes ``model`` (the adapter is folded into the base)."""
    folder = Path(folder)
    method = "norms" if hasattr(model, "zotune_adapter") else ("peft" if is_peft_model(model) else None)
    if method == "peft" and merge:
        model = model.merge_and_unload()
    if method is None or merge:
        path = folder / "model"
        model.save_pretrained(path)
    elif method == "peft":
        path = folder / "adapter"
        model.save_pretrained(path)
    else:
        from safetensors.torch import save_file

        path = folder / "adapter"
        path.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(path / NORMS_FILE),
                  metadata={"zotune_adapter": json.dumps(model.zotune_adapter),
                            "base_model": str(getattr(model, "name_or_path", ""))})
    tokenizer.save_pretrained(path)
    return path


def load_trained(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` (the base model) with the adapter saved by :func:`save_trained` in ``path``: a peft
    adapter folder gives ``PeftModel.from_pretrained(model, path)``; a norms folder is loaded into ``model``."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(path)).eval()
    if (path / NORMS_FILE).is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(path / NORMS_FILE))
        own = dict(model.named_parameters())
        unknown = [k for k in tensors if k not in own]
        if unknown:
            raise ZotuneError(f"{path / NORMS_FILE} holds {unknown[0]!r}, which this model does not have; "
                              "load it into the base model it was trained from")
        with torch.no_grad():
            for k, v in tensors.items():
                own[k].copy_(v)
        return model
    raise ZotuneError(f"{path} holds no adapter (adapter_config.json or {NORMS_FILE}); give the adapter folder "
                      "a run wrote (out/adapter)")
