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


def fingerprint(model: nn.Module) -> dict:
    """A JSON-serialisable description of ``model``'s blocks (names, shapes, in order) and its tying.

    Two models with equal fingerprints can share one trained bank: same number of blocks, same
    order, same shapes, same tying. Values (weights, seeds) do not enter it.
    """
    return {
        "blocks": [{"name": b.name, "shape": list(b.shape)} for b in model_blocks(model)],
        "tied_groups": [list(g) for g in tied_groups(model)],
    }


def fingerprint_mismatch(expected: dict, actual: dict, limit: int = 5) -> list[str]:
    """Human-readable differences between two fingerprints, at most ``limit`` (plus a count line).

    Reports, in this order: blocks missing from ``actual``, blocks whose shape differs, extra blocks
    in ``actual``, a differing block order (when the name sets agree), and differing tied groups.
    Empty when the fingerprints are compatible.
    """
    exp = [(b["name"], tuple(b["shape"])) for b in expected.get("blocks", [])]
    act = [(b["name"], tuple(b["shape"])) for b in actual.get("blocks", [])]
    act_shape = dict(act)
    exp_shape = dict(exp)
    problems: list[str] = []
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
