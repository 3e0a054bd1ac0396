"""Design check (issue 17): how much could an exact step on more of the top of the model add to the head step?

Tuner v2's head step moves the option rows of the output head along their exact gradient, which the forward passes
give in closed form, and leaves the rest of the model to MeZO. The loss reads the model only at the last position,
and the last layer's MLP at that position feeds nothing but the final norm and the head. So the gradient in that
MLP's weights, and in the final norm's gain, is also a closed form of numbers a forward pass computes at that one
position (the MLP's input ``u`` and the residual stream ``x`` entering the final norm): a backward pass through one
MLP on one vector per example, with no stored activations. Before building such a step into the engine, this
probe asks how much it could add, at the most, on frozen features:

1. One forward pass per example of the split (no training) records ``u``, ``x`` and the MLP's output ``m`` at the
   last position; the residual ``r = x - m`` does not depend on the MLP.
2. On those features, a small model is trained with Adam: the option rows (``head``), plus the final norm's gain
   (``norm``), the MLP's down projection (``down``) or the whole MLP (``mlp``). Its option logits are
   ``w_t . norm(r + MLP(u))``, which at the start are the model's own (checked).
3. Batches of 8 in the order the fine-tuning runs use for the seed, 500 steps (tuner v2's steps at 1000 passes);
   every (head lr, extra lr) of a small grid, the pick by the lowest final dev loss.

The body below the last MLP stays frozen, so this is the top block's share alone: an upper bound on what the
closed-form step could add to the head step's, not a ZO run. Meta-training tasks only (held-out tasks are not for
designing). Llama-family models (SmolLM2, Llama 3.2, tiny-llama).

    python benchmarks/top_block_probe.py --task packaged:word-class \
        --out reports/tuner-v2-smollm2/top-block/word-class.json
    python benchmarks/top_block_probe.py table reports/tuner-v2-smollm2/top-block/*.json   # the picks, the rule
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.common.atomic import atomic_file  # noqa: E402
from finetune.data.batches import batches  # noqa: E402
from finetune.common.errors import ZotuneError  # noqa: E402
from finetune.head import option_token_ids  # noqa: E402
from finetune.top import rms_norm, top_block  # noqa: E402
from finetune.trainer import FinetuneConfig, prepare  # noqa: E402

VARIANTS = ("head", "head+norm", "head+down", "head+mlp")
HEAD_LRS = (3e-4, 1e-3, 3e-3)
EXTRA_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def top_modules(model) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The last MLP, the final norm and the head, as the top-block step finds them (a one-line error otherwise)."""
    try:
        return top_block(model)
    except ZotuneError:
        raise SystemExit("error: this probe reads Llama-family models (as the top-block step does: a last MLP of "
                         "gate, up and down projections without biases, then an RMS norm)") from None


@torch.no_grad()
def capture(model, scorer, examples, batch_size: int) -> dict[str, torch.Tensor]:
    """``u``, ``m``, ``x`` (float32, ``[n, d]``) at the last position of every example, and the model's option
    log-probabilities ``scores`` ``[n, n_options]``, from one pass over ``examples`` in order."""
    mlp, norm, _ = top_modules(model)
    got = {"u": [], "m": [], "x": []}

    def at_mlp(module, inputs, output) -> None:
        got["u"].append(inputs[0][:, -1].float())
        got["m"].append(output[:, -1].float())

    def at_norm(module, inputs, output) -> None:
        got["x"].append(inputs[0][:, -1].float())

    hooks = [mlp.register_forward_hook(at_mlp), norm.register_forward_hook(at_norm)]
    try:
        scores = scorer.score_matrix(model, examples, batch_size).float()
    finally:
        for h in hooks:
            h.remove()
    return {**{k: torch.cat(v) for k, v in got.items()}, "scores": scores}


class Top(nn.Module):
    """The option logits from recorded features: ``rows[t] . norm(r + mlp(u))``; trainable copies of the option
    rows, the final norm's gain and the last MLP."""

    def __init__(self, model, tokens: list[int]):
        super().__init__()
        mlp, norm, head = top_modules(model)
        self.mlp = copy.deepcopy(mlp).float()
        self.gain = nn.Parameter(norm.weight.detach().float().clone())
        self.eps = norm.variance_epsilon
        self.rows = nn.Parameter(head.weight.detach()[tokens].float().clone())
        self.place = {t: i for i, t in enumerate(tokens)}

    def groups(self, variant: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(the head's parameters, the extra ones) that ``variant`` trains; the rest is frozen."""
        extra = {"head": [], "head+norm": [self.gain], "head+down": [self.mlp.down_proj.weight],
                 "head+mlp": list(self.mlp.parameters())}[variant]
        for p in self.parameters():
            p.requires_grad_(False)
        for p in [self.rows, *extra]:
            p.requires_grad_(True)
        return [self.rows], extra

    def forward(self, f: dict[str, torch.Tensor], idx: torch.Tensor, options: list[list[int]]) -> torch.Tensor:
        x = f["x"][idx] - f["m"][idx] + self.mlp(f["u"][idx])
        y = rms_norm(x, self.gain, self.eps)
        width = max(map(len, options))
        out = torch.full((len(idx), width), float("-inf"))
        for i, ids in enumerate(options):
            out[i, : len(ids)] = self.rows[[self.place[t] for t in ids]] @ y[i]
        return out


def assess(top: Top, f: dict, options: list[list[int]], labels: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        z = top(f, torch.arange(len(labels)), options)
        return {"loss": F.cross_entropy(z, labels).item(), "accuracy": (z.argmax(-1) == labels).float().mean().item()}


def train(model, tokens, variant: str, head_lr: float, extra_lr: float, splits: dict, order: list[list[int]]) -> dict:
    """One Adam run of ``variant`` over the batches ``order`` (indices into the training split); the final losses
    and accuracies on every split."""
    top = Top(model, tokens)
    head, extra = top.groups(variant)
    opt = torch.optim.Adam([{"params": head, "lr": head_lr}] + ([{"params": extra, "lr": extra_lr}] if extra else []))
    f, options, labels = splits["train"]
    for idx in order:
        idx_t = torch.tensor(idx)
        loss = F.cross_entropy(top(f, idx_t, [options[i] for i in idx]), labels[idx_t])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"variant": variant, "head_lr": head_lr, "extra_lr": extra_lr if extra else None,
            **{name: assess(top, *split) for name, split in splits.items()}}


RULE_POINTS = 3.0  # the rule fixed before the SmolLM2 runs (reports/tuner-v2-smollm2/run.sh, stage top-block)


def table(paths: list[Path]) -> str:
    """The probes' picks as a Markdown table, one row per task, and the rule's verdict: the better (by dev loss) of
    head+down and head+mlp beats the head alone's dev loss and its dev accuracy by at least RULE_POINTS points."""
    def edge(pick: dict, grid: dict) -> str:  # a pick at the top of a grid: a larger lr might have done better
        top = pick["head_lr"] == max(grid["head"]) or pick["extra_lr"] == max(grid["extra"])
        return " ^" if top else ""

    rows = ["| task | start: dev acc | head | head+norm | head+down | head+mlp | rule |", "|---" * 7 + "|"]
    passed = 0
    for path in paths:
        r = json.loads(Path(path).read_text())
        picks, grid = r["picks"], r.get("grid", {"head": HEAD_LRS, "extra": EXTRA_LRS})
        cells = [f"{100 * picks[v]['dev']['accuracy']:.0f} ({picks[v]['dev']['loss']:.3f}; test "
                 f"{100 * picks[v]['test']['accuracy']:.1f}){edge(picks[v], grid)}" for v in VARIANTS]
        best = min(("head+down", "head+mlp"), key=lambda v: picks[v]["dev"]["loss"])
        ok = picks[best]["dev"]["loss"] < picks["head"]["dev"]["loss"] and \
            100 * (picks[best]["dev"]["accuracy"] - picks["head"]["dev"]["accuracy"]) >= RULE_POINTS - 1e-9
        passed += ok
        rows.append(f"| {r['task']} | {100 * r['start']['dev']['accuracy']:.0f} | {' | '.join(cells)} | "
                    f"{best}: {'yes' if ok else 'no'} |")
    note = ("Each cell: the pick's dev accuracy (its dev loss; its test accuracy), in points; ^: the pick is at the "
            f"top of the head or the extra lr grid. Rule met on {passed} of {len(paths)} tasks.")
    return "\n".join(rows) + f"\n\n{note}\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:
        print(table([Path(a) for a in argv[1:]]), end="")
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, help="a meta-training task (multiple choice, one-token options)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--head-lrs", type=lambda t: [float(x) for x in t.split(",")], default=list(HEAD_LRS))
    p.add_argument("--extra-lrs", type=lambda t: [float(x) for x in t.split(",")], default=list(EXTRA_LRS))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    t0 = time.time()
    cfg = FinetuneConfig(model=args.model, task=args.task, seed=args.seed, batch_size=args.batch_size,
                         threads=args.threads)
    task, model, _, scorer = prepare(cfg)
    model.eval()
    splits, tokens = {}, set()
    for name in ("train", "dev", "test"):
        examples = getattr(task, name)
        options = option_token_ids(scorer, examples)
        tokens |= {t for ids in options for t in ids}
        splits[name] = (capture(model, scorer, examples, 16), options, torch.tensor([e.label for e in examples]))
    tokens = sorted(tokens)
    top = Top(model, tokens)
    for name, (f, options, labels) in splits.items():  # the recorded features give the model's own option scores
        with torch.no_grad():
            mine = torch.log_softmax(top(f, torch.arange(len(labels)), options), -1)
        theirs = torch.log_softmax(f["scores"][:, : mine.shape[1]], -1)
        gap = float((mine - theirs).nan_to_num(0.0, posinf=0.0, neginf=0.0).abs().max())
        if gap > 1e-3:
            raise SystemExit(f"error: the recorded features do not give the model's option scores on {name} "
                             f"(off by {gap:.2g}); this model's top block is not the one this probe assumes")
    start = {name: assess(top, *split) for name, split in splits.items()}
    where = {id(e): i for i, e in enumerate(task.train)}
    data = batches(task.train, args.batch_size, args.seed)
    order = [[where[id(e)] for e in next(data)] for _ in range(args.steps)]
    runs = []
    for variant in VARIANTS:
        for head_lr in args.head_lrs:
            for extra_lr in (args.extra_lrs if variant != "head" else (None,)):
                runs.append(train(model, tokens, variant, head_lr, extra_lr or 0.0, splits, order))
                r = runs[-1]
                print(f"{variant:10s} head {head_lr:g} extra {extra_lr or 0:g}: dev loss {r['dev']['loss']:.4f} "
                      f"acc {r['dev']['accuracy']:.3f}; test acc {r['test']['accuracy']:.3f}", flush=True)
    picks = {v: min((r for r in runs if r["variant"] == v), key=lambda r: r["dev"]["loss"]) for v in VARIANTS}
    out = {"task": args.task, "model": args.model, "seed": args.seed, "steps": args.steps,
           "batch_size": args.batch_size, "grid": {"head": args.head_lrs, "extra": args.extra_lrs},
           "n": {k: len(v[2]) for k, v in splits.items()}, "start": start,
           "picks": picks, "runs": runs, "seconds": round(time.time() - t0)}
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(out, indent=1, allow_nan=False))
    print(f"start: dev loss {start['dev']['loss']:.4f} acc {start['dev']['accuracy']:.3f}")
    for v, r in picks.items():
        print(f"pick {v:10s}: head {r['head_lr']:g} extra {r['extra_lr']}: dev loss {r['dev']['loss']:.4f} "
              f"acc {r['dev']['accuracy']:.3f}; test loss {r['test']['loss']:.4f} acc {r['test']['accuracy']:.3f}")


if __name__ == "__main__":
    main()
