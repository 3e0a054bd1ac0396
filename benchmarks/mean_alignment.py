"""Is the online mean direction better aligned with the gradient than a random direction? Measured along MeZO.

    python benchmarks/mean_alignment.py [--model smollm2-135m] [--task bigbench:strategyqa] [--steps 80] \
        [--lr 3e-5] [--batch-size 8] [--decays 0.9,0.99] [--check-every 20] [--grad-examples 64] [--out FILE]

Runs MeZO (a tuner with an untrained bank and a fresh direction policy: every gate is 0, so the steps are
MeZO's bit for bit) and keeps the online mean m_b of ``finetune.zo.online`` for each decay. Every
``--check-every`` steps it computes, by backpropagation (a diagnostic only), the gradient G of the mean loss
over ``--grad-examples`` training examples and reports, per block b,

    A_b = n_b · cos²(m_b, G_b) = (G_b · m̂_b)² / ‖G_b‖²        (m̂_b = m_b / RMS(m_b))

the first-order gain of perturbing block b along m̂_b instead of along Gaussian noise ξ_b, for which
E[(G_b · ξ_b)²] / ‖G_b‖² = 1. A direction policy can only help where A_b > 1 (``pertnn/policy.py``). It prints
the gradient-weighted mean Σ_b A_b ‖G_b‖² / Σ_b ‖G_b‖² (the gain of the whole step; chance level 1), the
median over blocks (chance level 0.455, the median of χ²₁), and both for fresh Gaussian directions as a
control (averaged over 8 draws).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from checkpoints import Tuner  # noqa: E402
from finetune.data.models import model_id  # noqa: E402
from finetune.zo.online import OnlineMean  # noqa: E402
from finetune.zo.optim import TunedZO  # noqa: E402
from finetune.data.batches import batches  # noqa: E402
from finetune.trainer import FinetuneConfig, prepare  # noqa: E402
from pertnn.policy import PolicyConfig  # noqa: E402


def gradient(model, scorer, examples, chunk: int = 8) -> list[torch.Tensor]:
    """∇ of the mean loss over ``examples`` w.r.t. every trainable parameter (block order)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i in range(0, len(examples), chunk):
            part = examples[i:i + chunk]
            (scorer.loss(model, part) * (len(part) / len(examples))).backward()
    grads = [p.grad.detach().clone() for p in params]
    model.zero_grad(set_to_none=True)
    return grads


def alignment(direction: list[torch.Tensor], grads: list[torch.Tensor]) -> tuple[float, float]:
    """(gradient-weighted mean of A_b, median of A_b) over blocks with a non-zero direction and gradient."""
    a, w = [], []
    for d, g in zip(direction, grads):
        dd = float(torch.dot(d.reshape(-1).double(), d.reshape(-1).double()))
        gg = float(torch.dot(g.reshape(-1).double(), g.reshape(-1).double()))
        if dd == 0 or gg == 0:
            continue
        dg = float(torch.dot(d.reshape(-1).double(), g.reshape(-1).double()))
        a.append(d.numel() * dg * dg / (dd * gg))
        w.append(gg)
    t = torch.tensor(a, dtype=torch.float64)
    return float((t * torch.tensor(w, dtype=torch.float64)).sum() / sum(w)), float(t.median())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="bigbench:strategyqa")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--decays", default="0.9,0.99")
    p.add_argument("--check-every", type=int, default=20)
    p.add_argument("--grad-examples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the measurements to this JSON file")
    args = p.parse_args(argv)

    cfg = FinetuneConfig(model=args.model, task=args.task, batch_size=args.batch_size, seed=args.seed,
                         threads=args.threads, n_dev=0, n_test=1)
    task, model, _, scorer = prepare(cfg)
    decays = [float(d) for d in args.decays.split(",")]
    tuner = Tuner.for_model(model, model_id(args.model), policy_config=PolicyConfig(decay=decays[0]))
    opt = TunedZO(model, tuner, lr=args.lr, eps=args.eps, seed=args.seed)
    extra = [OnlineMean(opt.engine, PolicyConfig(decay=d)) for d in decays[1:]]
    grad_set = task.train[-args.grad_examples:]
    data = batches(task.train, args.batch_size, args.seed)
    rows = []
    gen = torch.Generator().manual_seed(args.seed + 1)
    for step in range(1, args.steps + 1):
        batch = next(data)
        loss = opt.step(lambda: scorer.loss(model, batch))
        for online in extra:
            online.update(opt.last["seed"], opt.last["projected_grad"], opt.last["gates"])
        if step % args.check_every == 0:
            grads = gradient(model, scorer, grad_set)
            row = {"step": step, "loss": loss}
            for d, online in zip(decays, [opt.online, *extra]):
                row[f"mean_decay_{d:g}"] = alignment(online.means, grads)
                row[f"kappa_median_decay_{d:g}"] = float(online.kappa().median())
            draws = [alignment([torch.randn(g.shape, generator=gen) for g in grads], grads) for _ in range(8)]
            row["gaussian_control"] = [sum(d[k] for d in draws) / len(draws) for k in (0, 1)]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
