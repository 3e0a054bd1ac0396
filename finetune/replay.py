"""Fine-tunes as replayable logs: a ZO run is its base model plus, per step, the seeds and coefficients of
the update it applied, the learning rate, and (for a tuner) the per-block scales.

``finetune --save-log`` writes ``log.jsonl`` next to ``metrics.json``: a header line (format, base model,
its block fingerprint and a SHA-256 of its trainable weights, the update rule and its constants, the noise
source) and one line per applied step::

    {"step": 1, "lr": 0.001, "terms": [[seed, coefficient], ...], "scales": [...], "head": [[token, [...]], ...]}

``scales`` is in tuner runs only; ``head`` in runs with a head step (``--head-lr``, ``--head-race`` or a tuner's
head step, :mod:`finetune.head`): the change the step added to each option token's row of the output head, one
number per hidden unit. That is a few hundred bytes a step whatever the model's size (a tuner's scales add one
number per block), plus about 10 KB per option token a step with a head step (SmolLM2: 576 numbers a row).
:func:`replay` rebuilds the fine-tuned weights from the base model by applying the same updates with the
same code (weight decay, then the update rule: SGD, heavy-ball momentum or Adam, then the head rows), which
gives the trained weights bit for bit on the same kind of device. Strict JSON: Python writes floats with ``repr``, which
reads back to the same double, and non-finite numbers are refused.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from finetune.common.errors import ZotuneError
from finetune.head import head_rows
from finetune.zo.engine import Direction, as_terms
from finetune.zo.optim import ZOAdam, ZOOptimizer, ZOSGD
from pertnn.blocks import fingerprint, fingerprint_mismatch, trainable_tensors

FORMAT = "zotune-log/2"  # 2: steps may carry head rows; a log of format 1 (never has them) reads the same
FORMATS = ("zotune-log/1", FORMAT)
LOG_FILE = "log.jsonl"


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the trainable tensors in block order: each name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name, p in trainable_tensors(model):
        t = p.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def unsupported(opt: ZOOptimizer) -> str | None:
    """Why ``opt``'s steps cannot be logged, or None. A direction with a stored offset (LDSD's learned mean,
    a tuner's online mean) is not a function of the logged seeds alone."""
    if getattr(opt, "policy", None) is not None:
        return "a tuner with a direction policy (its online mean direction is not in the log)"
    if hasattr(opt, "means") and "ldsd_k" in opt.param_groups[0]:
        return "--method ldsd (its learned direction mean is not in the log)"
    if not isinstance(opt, (ZOSGD, ZOAdam)):
        return f"the {type(opt).__name__} update rule"
    return None


def rule(opt: ZOOptimizer) -> dict:
    """The update rule and its constants, as the log's header records them."""
    group = opt.param_groups[0]
    if isinstance(opt, ZOAdam):
        return {"rule": "adam", "betas": list(group["betas"]), "adam_eps": group["adam_eps"],
                "weight_decay": group["weight_decay"]}
    return {"rule": "sgd", "momentum": group["momentum"], "weight_decay": group["weight_decay"]}


def _dumps(obj) -> str:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise ZotuneError(f"cannot log a non-finite number ({exc}); the run diverged: lower --lr") from exc


def _scales(values) -> list[float] | None:
    if values is None:
        return None
    return values.tolist() if isinstance(values, torch.Tensor) else [float(v) for v in values]


class StepLog:
    """Writes a run's log as it goes (``path``, JSON lines). On resume, ``start`` is the step the run
    continues after: later lines (written after the last checkpoint) are dropped."""

    def __init__(self, path: Path, start: int = 0):
        self.path = Path(path)
        if start and self.path.exists():
            lines = self.path.read_text().splitlines()
            keep = [ln for ln in lines if "step" not in json.loads(ln) or json.loads(ln)["step"] <= start]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif start:
            raise ZotuneError(f"cannot resume with --save-log: {self.path} is missing; rerun without --save-log "
                              "or from scratch")

    def header(self, model: torch.nn.Module, model_name: str, opt: ZOOptimizer, config: dict) -> None:
        why = unsupported(opt)
        if why:
            raise ZotuneError(f"--save-log does not support {why}; drop --save-log")
        head = {"format": FORMAT, "model": model_name, "fingerprint": fingerprint(model),
                "weights_sha256": weights_sha256(model), "dtype": str(opt.engine.params[0].dtype),
                "noise": opt.engine.noise.name, "device_type": opt.engine.params[0].device.type,
                **rule(opt), "config": config}
        self.path.write_text(_dumps(head) + "\n")

    def record(self, step: int, opt: ZOOptimizer, head=None) -> None:
        """Append step ``step``'s applied update and, with ``head`` (a :class:`~finetune.head.HeadStep`), the
        rows its step changed (call after both steps, before the schedule moves the lr)."""
        d = opt.applied
        if d is None:
            return
        if d.offset is not None:
            raise ZotuneError("--save-log cannot log a direction with a stored offset; drop --save-log")
        rec = {"step": step, "lr": opt.param_groups[0]["lr"], "terms": [[s, c] for s, c in as_terms(d.seeds)]}
        scales = _scales(d.scales)
        if scales is not None:
            rec["scales"] = scales
        if head is not None and head.applied:
            rec["head"] = [[t, delta.tolist()] for t, delta in sorted(head.applied.items())]  # exact: fp32 in a double
        with self.path.open("a") as f:
            f.write(_dumps(rec) + "\n")


def read_log(path: Path) -> tuple[dict, list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise ZotuneError(f"no log at {path}; give the log.jsonl a run wrote with --save-log")
    try:
        lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except json.JSONDecodeError as exc:
        raise ZotuneError(f"{path} is not a zotune log ({exc})") from exc
    if not lines or lines[0].get("format") not in FORMATS:
        raise ZotuneError(f"{path} is not a zotune log (no {' or '.join(FORMATS)} header line); a newer zotune may "
                          "have written it")
    return lines[0], lines[1:]


def check_base(head: dict, model: torch.nn.Module) -> None:
    """Refuse a base model other than the log's (blocks, or weights)."""
    problems = fingerprint_mismatch(head["fingerprint"], fingerprint(model))
    if problems:
        raise ZotuneError(f"this log was written for another model ({head['model']}): {problems[0]}; "
                          "replay it on that base model")
    if weights_sha256(model) != head["weights_sha256"]:
        raise ZotuneError(f"the base model's weights differ from those the log was written for ({head['model']}, "
                          f"sha256 {head['weights_sha256'][:12]}...); replay it on that exact base model")
    dtype = str(model_dtype(model))
    if dtype != head["dtype"]:
        raise ZotuneError(f"the log was written in {head['dtype']}, the base model is {dtype}; load it with that dtype")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return trainable_tensors(model)[0][1].dtype


def replay_into(model: torch.nn.Module, head: dict, steps: list[dict]) -> int:
    """Apply the logged updates to ``model`` (the log's base model) in place; return the number applied."""
    check_base(head, model)
    device = trainable_tensors(model)[0][1].device.type
    if head["noise"] == "gaussian" and device != head["device_type"]:
        raise ZotuneError(f"this log's gaussian noise was drawn on {head['device_type']}; replay it with "
                          f"--device {head['device_type']} (noise generators differ between device types)")
    kw = dict(lr=0.0, eps=1.0, weight_decay=head["weight_decay"], noise=head["noise"])
    if head["rule"] == "adam":
        opt: ZOOptimizer = ZOAdam(model, betas=tuple(head["betas"]), adam_eps=head["adam_eps"], **kw)
    else:
        opt = ZOSGD(model, momentum=head["momentum"], **kw)
    group = opt.param_groups[0]
    # where the head rows live: the table and a token's row in it (looked up only if the log moved any)
    table, row_of = head_rows(model)[1:] if any(rec.get("head") for rec in steps) else (None, None)
    with torch.no_grad():
        for rec in steps:
            lr = rec["lr"]
            if not (isinstance(lr, (int, float)) and math.isfinite(lr)):
                raise ZotuneError(f"step {rec.get('step')} of the log has no valid lr")
            group["lr"] = lr
            opt._decay(group)
            opt._apply(group, Direction([(int(s), float(c)) for s, c in rec["terms"]], rec.get("scales")))
            for t, delta in rec.get("head", []):  # after the ZO update, as in training (the rows may be tied)
                table[row_of(int(t))] += torch.tensor(delta, dtype=table.dtype, device=table.device)
    return len(steps)


def replay(log: Path, model_name: str, out: Path, device: str | None = None, threads: int | None = None) -> int:
    """``cli.py replay``: load ``model_name``, apply ``log`` and save the result to ``out`` (atomically)."""
    from finetune.common.atomic import atomic_dir
    from finetune.data.models import load_model, set_threads

    head, steps = read_log(log)
    set_threads(threads)
    dtype = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(head["dtype"])
    if dtype is None:
        raise ZotuneError(f"the log's dtype {head['dtype']} is not one --dtype offers")
    model, tokenizer = load_model(model_name, dtype=dtype, device=device or head["device_type"],
                                  seed=head["config"].get("seed", 0))
    n = replay_into(model, head, steps)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return n
