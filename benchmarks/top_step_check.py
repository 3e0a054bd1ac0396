"""The top-block step's gradient on a real model against backpropagation through the whole model (issue 17).

    python benchmarks/top_step_check.py [--model smollm2-135m] [--task packaged:word-class] [--examples 4]

Prints the relative error, per projection of the last MLP, of (1) the gradient :class:`finetune.top.TopStep`
reads off one forward pass at theta and (2) the mean of MeZO's two passes at theta +- eps z (O(eps^2)), each
against autograd through every layer. tests/test_top.py checks the same on tiny models.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.top import PROJECTIONS, TopStep  # noqa: E402
from finetune.trainer import FinetuneConfig, prepare, step_closure  # noqa: E402
from finetune.zo.engine import Direction, ZOEngine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="packaged:word-class")
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    task, model, _, scorer = prepare(FinetuneConfig(model=args.model, task=args.task, threads=args.threads))
    batch = task.train[: args.examples]
    mlp = TopStep(model, scorer, lr=0.0).mlp
    with torch.enable_grad():
        scorer.loss(model, batch).backward()
    ref = {n: getattr(mlp, n).weight.grad.clone() for n in PROJECTIONS}
    model.zero_grad(set_to_none=True)
    one, pair = TopStep(model, scorer, lr=0.0), TopStep(model, scorer, lr=0.0)
    with torch.inference_mode(), one.watching(batch):
        scorer.loss(model, batch)
    with pair.watching(batch):
        ZOEngine(model).spsa(step_closure(model, scorer, batch), Direction(7), args.eps)
    for name, top in (("one pass at theta", one), (f"MeZO's two passes, eps {args.eps:g}", pair)):
        g = top.gradient()
        errors = ", ".join(f"{n} {float((g[n] - ref[n]).norm() / ref[n].norm()):.1e}" for n in PROJECTIONS)
        print(f"{name}: relative error against backpropagation: {errors}")


if __name__ == "__main__":
    main()
