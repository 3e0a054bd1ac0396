"""Design check (issue 17): MeZO on the whole model plus the option rows of the output head stepped along their
exact gradient, which the forward passes already give.

For single-token options the task loss depends on the head only through the option tokens' logits
``h_i . w_t`` (h_i the head's input at the scored position), so its gradient in the option rows is, in closed
form, ``sum_i (softmax_options(logits_i) - onehot(label_i))_t h_i / B``: no backward pass, no stored
activations, only ``h`` at one position per example. MeZO's two perturbed passes each give one such gradient;
their mean is the gradient at theta up to O(eps^2). The rows take an Adam step along it after MeZO's update.
(With tied embeddings the rows are also input embeddings; that part of their gradient is left to MeZO.)

This script came first and produced the hotels design check in reports/tuner-v2-smollm2; the step it computes in
its own loop became ``--head-lr`` (finetune/head.py, tested there), which every later run used. Kept as run.

Each run uses the bench's split, batch order and noise stream for its seed (``finetune.trainer.prepare``,
``batches``, the ZO optimizer seeded with the seed), so ``--head-lr 0`` is MeZO as ``bench`` runs it.
Meta-training tasks only: held-out tasks are not for designing.

    python benchmarks/head_hybrid.py --task bigbench:multiemo/hotels_sentence_en:ambivalent=mixed \\
        --lr 3e-5 --head-lrs 1e-3 --seeds 0 --out reports/tuner-v2-smollm2/head-hybrid-hotels.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.data.batches import batches  # noqa: E402
from finetune.trainer import (FinetuneConfig, compute_precision, evaluation_point, prepare,  # noqa: E402
                              step_closure)
from finetune.zo.optim import make_optimizer  # noqa: E402


class HeadGradient:
    """Accumulates the closed-form gradient of the option cross-entropy in the head's option rows over the
    forward passes made while it is active (a hook on the head), and averages it per pass."""

    def __init__(self, model, scorer):
        self.head = model.get_output_embeddings()
        self.scorer, self.batch = scorer, None
        self.sum: dict[int, torch.Tensor] = {}
        self.passes = 0
        self.head.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.batch is None:
            return
        h = inputs[0][:, -1].float()              # [B, d]: the position that predicts the option token
        logits = output[:, -1].float()            # [B, V]
        B = len(self.batch)
        for i, ex in enumerate(self.batch):
            ids = [self.scorer.token_ids(o, False) for o in ex.options]
            if any(len(t) != 1 for t in ids):
                raise SystemExit("error: this check needs single-token options")
            ids = [t[0] for t in ids]
            q = torch.softmax(logits[i, ids], dim=0)
            q[ex.label] -= 1
            for t, d in zip(ids, q):
                self.sum[t] = self.sum.get(t, torch.zeros_like(h[i])) + d * h[i] / B
        self.passes += 1

    def take(self) -> dict[int, torch.Tensor]:
        g = {t: v / max(self.passes, 1) for t, v in self.sum.items()}
        self.sum, self.passes = {}, 0
        return g


def run(cfg: FinetuneConfig, head_lr: float, eval_points: int) -> dict:
    task, model, tok, scorer = prepare(cfg)
    opt = make_optimizer("sgd", model, lr=cfg.lr, eps=cfg.eps, seed=cfg.seed)
    grad = HeadGradient(model, scorer)
    W = grad.head.weight
    adam: dict[int, list] = {}
    b1, b2, ae = 0.9, 0.999, 1e-8
    every = max(1, cfg.steps // eval_points)
    curve, t0 = [], time.time()
    with torch.no_grad(), compute_precision(cfg, model):
        curve.append(evaluation_point(0, 0, model, scorer, task, cfg.batch_size))
        data = batches(task.train, cfg.batch_size, cfg.seed)
        for step in range(1, cfg.steps + 1):
            batch = next(data)
            grad.batch = batch
            opt.step(step_closure(model, scorer, batch))
            grad.batch = None
            g = grad.take()
            if head_lr > 0:
                for t, gt in g.items():  # Adam on each option row
                    m, v = adam.setdefault(t, [torch.zeros_like(gt), torch.zeros_like(gt)])
                    m.mul_(b1).add_(gt, alpha=1 - b1)
                    v.mul_(b2).addcmul_(gt, gt, value=1 - b2)
                    mhat, vhat = m / (1 - b1 ** step), v / (1 - b2 ** step)
                    W[t] -= (head_lr * mhat / (vhat.sqrt() + ae)).to(W.dtype)
            if step % every == 0:
                curve.append(evaluation_point(step, opt.engine.forwards, model, scorer, task, cfg.batch_size))
                print(json.dumps({"head_lr": head_lr, **{k: curve[-1][k] for k in ("forwards", "test_loss", "test", "dev_loss")}}),
                      flush=True)
    return {"lr": cfg.lr, "head_lr": head_lr, "seed": cfg.seed, "curve": curve, "seconds": round(time.time() - t0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--head-lrs", default="1e-3")
    p.add_argument("--seeds", default="0")
    p.add_argument("--forwards", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-points", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for head_lr in [float(x) for x in args.head_lrs.split(",")]:
            if any(r["seed"] == seed and r["head_lr"] == head_lr and r["lr"] == args.lr for r in rows):
                continue
            cfg = FinetuneConfig(model=args.model, task=args.task, lr=args.lr, steps=args.forwards // 2,
                                 batch_size=args.batch_size, seed=seed, threads=args.threads, autocast="bf16")
            rows.append(run(cfg, head_lr, args.eval_points))
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1, allow_nan=False))
            tmp.replace(args.out)


if __name__ == "__main__":
    main()
