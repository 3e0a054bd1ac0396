"""Check the expected-change meta-objective (meta/objective.py) on a real model before trusting it.

For ``--pairs`` (train batch, held-out batch) pairs of one task it measures, per block: the agreement of the
train and held-out gradients ``<a_b, h_b>``, ``|a_b|^2`` and Hutchinson estimates of ``tr H_b`` (``--probes``
Hessian-vector products). It reports

* whether the signal is consistent: the sum of ``<a, h>`` per pair, and how many blocks agree in sign over
  all pairs;
* how trustworthy the curvature is: how many trace estimates are negative;
* MeZO's allocation (every ``s_b = 1``): A, C, the best step ``A / C`` and the expected change at ``--lr``;
* the signal-to-noise ratio of the expected first-order change ``-eta A`` over pairs, against one noise draw
  per pair (``-eta (z.a)(z.h)``, what a meta-gradient from one draw sees), from ``--draws`` draws per pair.

    python benchmarks/objective_check.py --task bigbench:multiemo/hotels_sentence_en:ambivalent=mixed \\
        --out reports/objective-check-smollm2/hotels.json

Use meta-training tasks only: held-out tasks are not for designing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.data.models import load_model, set_threads  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.data.tasks import load_task  # noqa: E402
from meta.objective import block_terms, expected_change  # noqa: E402
from pertnn.blocks import trainable_tensors  # noqa: E402


def snr(values: list[float]) -> float | None:
    if len(values) < 2 or statistics.stdev(values) == 0:
        return None
    return statistics.mean(values) / statistics.stdev(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", required=True)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_model(args.model)
    names, params = zip(*trainable_tensors(model))
    scorer = TaskScorer(tok)
    b = args.batch_size
    task = load_task(args.task, seed=0, n_train=args.pairs * b, n_dev=args.pairs * b, n_test=0)
    gen = torch.Generator().manual_seed(0)
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no double backward
        rows, dots = pairs(args, model, scorer, task, params, gen)
    summarise(args, rows, dots, names, len(params))


def pairs(args, model, scorer, task, params, gen):
    b, rows, dots = args.batch_size, [], []
    for i in range(args.pairs):
        train, held = task.train[i * b:(i + 1) * b], task.dev[i * b:(i + 1) * b]
        terms = block_terms(list(params), lambda: scorer.loss(model, train), lambda: scorer.loss(model, held),
                            probes=args.probes, generator=gen)
        ones = torch.ones(len(params), dtype=torch.float64)
        mezo = expected_change(terms, ones, args.lr)
        h = [g.detach() for g in torch.autograd.grad(scorer.loss(model, held), params, allow_unused=True)]
        h = [torch.zeros_like(p) if g is None else g for g, p in zip(h, params)]
        one_draw = []
        for _ in range(args.draws):
            za = zh = 0.0
            for a_b, h_b in zip(terms.train_grad, h):
                z = torch.randn(a_b.shape, generator=gen, dtype=a_b.dtype)
                za += float((z * a_b).sum())
                zh += float((z * h_b).sum())
            one_draw.append(-args.lr * za * zh)
        dots.append(terms.dot)
        rows.append({"pair": i, "sum_dot": float(terms.dot.sum()), "A": mezo["A"], "C": mezo["C"],
                     "eta_star": mezo["eta_star"], "change_at_lr": mezo["change"],
                     "first_order_at_lr": -args.lr * mezo["A"], "negative_traces": int((terms.trace < 0).sum()),
                     "one_draw": one_draw})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "one_draw"}), flush=True)
    return rows, dots


def summarise(args, rows, dots, names, n_blocks):
    b = args.batch_size
    d = torch.stack(dots)
    agree = int(((d > 0).all(0) | (d < 0).all(0)).sum())
    analytic = [r["first_order_at_lr"] for r in rows]
    draws = [x for r in rows for x in r["one_draw"]]
    summary = {"model": args.model, "task": args.task, "pairs": args.pairs, "batch_size": b, "probes": args.probes,
               "blocks": n_blocks, "blocks_agreeing_in_every_pair": agree,
               "sum_dot_per_pair": [r["sum_dot"] for r in rows],
               "negative_traces_per_pair": [r["negative_traces"] for r in rows],
               "snr_expected_first_order": snr(analytic), "snr_one_draw": snr(draws),
               "largest_agreeing_blocks": [names[j] for j in d.mean(0).argsort(descending=True)[:10].tolist()],
               "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, allow_nan=False))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
