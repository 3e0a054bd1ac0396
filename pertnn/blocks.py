"""Blocks: the trainable tensors of a model in a fixed order, their kind, their tying, and a fingerprint.

A *block* is one ``named_parameters()`` tensor with ``requires_grad`` (tied tensors once), in the order of
:func:`trainable_tensors`, the one enumeration the ZO engine, the features and the artifact all use; the
learned tuner gives one σ to each. Blocks are classified
by tensor identity and ``ndim`` only, never by name substrings (the public code's ``'bias'``/``'norm'``/
``'embed'`` checks break on GPT-2's ``ln_*`` and on any tensor with three or more dims; docs/public-code.md):

* ``"embedding"``: a 2-D tensor that is the ``weight`` of an :class:`torch.nn.Embedding` module
  (subclasses included). A tied output head is the same tensor, so it is this block, counted once.
  Decision: *positional* embedding tables (GPT-2 ``wpe`` is a plain ``nn.Embedding``; OPT's
  ``embed_positions`` is an ``nn.Embedding`` subclass) are also ``"embedding"``: they are lookup tables
  whose rows receive gradient only where indexed, which is what this kind marks, and treating
  GPT-2 and OPT alike needs no architecture names. Callers that want the token table alone can
  compare with ``model.get_input_embeddings().weight`` themselves.
* ``"matrix"``: any other tensor with ``ndim >= 2`` (linear/conv weights, untied heads, 3-D+ tensors).
* ``"vector"``: ``ndim <= 1`` (norm weights, biases, scalars).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from torch import nn

KINDS = ("embedding", "matrix", "vector")


@dataclass(frozen=True)
class Block:
    """One trainable tensor: its (first) parameter name, shape, element count and kind (see module doc)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    kind: str


def _embedding_tensor_ids(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules()
            if isinstance(m, nn.Embedding) and getattr(m, "weight", None) is not None}


def trainable_tensors(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The blocks' tensors: ``(name, parameter)`` for every ``requires_grad`` parameter of ``model``, in
    ``named_parameters()`` order, tied tensors once (under their first name)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def model_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model``, in the order of :func:`trainable_tensors`."""
    emb = _embedding_tensor_ids(model)
    blocks = []
    for name, p in trainable_tensors(model):
        if p.ndim == 2 and id(p) in emb:
            kind = "embedding"
        elif p.ndim >= 2:
            kind = "matrix"
        else:
            kind = "vector"
        blocks.append(Block(name=name, shape=tuple(int(s) for s in p.shape), numel=int(p.numel()), kind=kind))
    return blocks


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Groups (of two or more) of parameter names that share one tensor, in order of first appearance."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


_PEFT_NAMES = {"LORA": "lora", "PREFIX_TUNING": "prefix"}
_PEFT_IGNORED = {"peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                 "inference_mode", "runtime_config"}


def adapter_config(model: nn.Module) -> dict | None:
    """What ``model``'s blocks are an adapter of, as a JSON-serialisable dict; None for the full model.

    Read without importing peft: a ``zotune_adapter`` attribute (set for ``--peft norms``), else the active
    config of a peft model (``model.peft_config``). LoRA gives ``{"method": "lora", "r", "alpha",
    "dropout", "targets"}`` (plus ``bias``/``use_rslora``/``use_dora`` when set), prefix tuning
    ``{"method": "prefix", "tokens", "projection"}``, any other peft method its scalar settings."""
    own = getattr(model, "zotune_adapter", None)
    if own is not None:
        return dict(own)
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    cfg = configs[active] if isinstance(active, str) and active in configs else next(iter(configs.values()))
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    kind = str(getattr(d.get("peft_type"), "value", d.get("peft_type")))
    method = _PEFT_NAMES.get(kind, kind.lower())
    if method == "lora":
        targets = d.get("target_modules")
        out = {"method": "lora", "r": int(d["r"]), "alpha": float(d["lora_alpha"]),
               "dropout": float(d.get("lora_dropout") or 0.0),
               "targets": sorted(targets) if isinstance(targets, (list, set, tuple)) else targets}
        for key, default in (("bias", "none"), ("use_rslora", False), ("use_dora", False)):
            if d.get(key, default) not in (default, None):
                out[key] = d[key]
        return out
    if method == "prefix":
        return {"method": "prefix", "tokens": int(d["num_virtual_tokens"]), "projection": bool(d.get("prefix_projection"))}
    return {"method": method, **{k: v for k, v in sorted(d.items()) if k not in _PEFT_IGNORED
                                 and isinstance(v, (bool, int, float, str))}}


def adapter_text(adapter: dict | None) -> str:
    """``adapter`` (:func:`adapter_config`) in words, e.g. ``LoRA r=8 alpha=16 dropout=0 targets q_proj,v_proj``."""
    if adapter is None:
        return "the full model (no adapter)"
    method = adapter.get("method")
    if method == "lora":
        targets = adapter.get("targets")
        extra = "".join(f" {k}={adapter[k]}" for k in ("bias", "use_rslora", "use_dora") if k in adapter)
        return (f"LoRA r={adapter.get('r')} alpha={adapter.get('alpha'):g} dropout={adapter.get('dropout'):g} "
                f"targets {','.join(targets) if isinstance(targets, list) else targets}{extra}")
    if method == "prefix":
        return f"prefix tuning, {adapter.get('tokens')} virtual tokens" + (" with projection" if adapter.get("projection") else "")
    if method == "norms":
        return "norm weights and biases only"
    return f"{method} adapter {json.dumps({k: v for k, v in adapter.items() if k != 'method'}, sort_keys=True)}"


def adapter_mismatch(expected: dict | None, actual: dict | None) -> str | None:
    """One phrase naming how two adapter configurations differ, or None when they are equal."""
    if expected == actual:
        return None
    if expected is None or actual is None or expected.get("method") != actual.get("method"):
        return f"adapter differs: expected {adapter_text(expected)}, got {adapter_text(actual)}"
    keys = [k for k in dict.fromkeys([*expected, *actual]) if expected.get(k) != actual.get(k)]
    return "adapter differs: " + ", ".join(f"{k} expected {expected.get(k)!r}, got {actual.get(k)!r}" for k in keys)


def fingerprint(model: nn.Module) -> dict:
    """A JSON-serialisable description of ``model``'s blocks (names, shapes, in order), its tying and
    the adapter they belong to (:func:`adapter_config`; None for the full model).

    Two models with equal fingerprints can share one trained bank: same number of blocks, same
    order, same shapes, same tying, same adapter. Values (weights, seeds) do not enter it.
    """
    return {
        "blocks": [{"name": b.name, "shape": list(b.shape)} for b in model_blocks(model)],
        "tied_groups": [list(g) for g in tied_groups(model)],
        "adapter": adapter_config(model),
    }


def fingerprint_mismatch(expected: dict, actual: dict, limit: int = 5) -> list[str]:
    """Human-readable differences between two fingerprints, at most ``limit`` (plus a count line).

    Reports, in this order: a differing adapter configuration, blocks missing from ``actual``, blocks whose shape differs, extra blocks
    in ``actual``, a differing block order (when the name sets agree), and differing tied groups.
    Empty when the fingerprints are compatible.
    """
    exp = [(b["name"], tuple(b["shape"])) for b in expected.get("blocks", [])]
    act = [(b["name"], tuple(b["shape"])) for b in actual.get("blocks", [])]
    act_shape = dict(act)
    exp_shape = dict(exp)
    problems: list[str] = []
    adapter = adapter_mismatch(expected.get("adapter"), actual.get("adapter"))
    if adapter:
        problems.append(adapter)
    for i, (name, shape) in enumerate(exp):
        if name not in act_shape:
            problems.append(f"missing block #{i} {name!r} (expected shape {list(shape)})")
        elif act_shape[name] != shape:
            problems.append(f"block #{i} {name!r}: shape differs, expected {list(shape)}, got {list(act_shape[name])}")
    for i, (name, shape) in enumerate(act):
        if name not in exp_shape:
            problems.append(f"extra block #{i} {name!r} (shape {list(shape)})")
    if not problems:
        for i, ((en, _), (an, _)) in enumerate(zip(exp, act)):
            if en != an:
                problems.append(f"block order differs at #{i}: expected {en!r}, got {an!r}")
                break
    exp_tied = sorted(sorted(g) for g in expected.get("tied_groups", []))
    act_tied = sorted(sorted(g) for g in actual.get("tied_groups", []))
    if exp_tied != act_tied:
        problems.append(f"tying differs: expected {exp_tied}, got {act_tied}")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more difference(s)"]
    return problems
