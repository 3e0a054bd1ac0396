"""Does one task's gradient live in the low-rank subspace of another task's gradient?

A learned tuner could perturb each weight matrix only inside a small subspace learned on the meta-training
tasks (``z = U C V^T`` with U, V kept from meta-training and C random, as LOZO does with random U, V). That pays
if a new task's true gradient keeps much more of its energy in that subspace than the batch noise does. From
the quarter mean gradients that ``benchmarks/allocation_probe.py --save-gradients`` writes, for each matrix:

* U, V: the top ``--rank`` singular vectors of the *source* task's mean gradient (all four quarters);
* the target's signal in the subspace, without bias: ``<P(G_12), P(G_34)> / <G_12, G_34>``, with G_12 and G_34
  the means of two disjoint halves of the target's examples and ``P(G) = U U^T G V V^T``;
* the target's noise in the subspace: ``|P(G_1 - G_2)|^2 / |G_1 - G_2|^2`` (the difference of two quarter means
  is pure noise; its energy is the per-example gradient covariance's trace, the Fisher part of the curvature).

In the expected-change objective (docs/tuner.md) a subspace beats MeZO's full-space noise, one step ahead, by a
factor between ``signal fraction / noise fraction`` (where the batch gradient is mostly signal) and its square
(where it is mostly noise, as at batch 8); a random subspace gives 1. With the source equal to the target the
subspace is chosen on the same examples it is evaluated on, an optimistic (in-sample) bound; ``--split`` makes it
fair: the subspace is chosen on the first two quarters and evaluated on the last two (signal ``<P(G_3), P(G_4)>``,
noise ``P(G_3 - G_4)``), a within-task oracle.

    python benchmarks/subspace_transfer.py --source /tmp/hotels.pt --target /tmp/hyperbaton.pt --rank 1,4

Meta-training tasks only: held-out tasks are not for designing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--target", type=Path, required=True)
    p.add_argument("--rank", default="1,4")
    p.add_argument("--split", action="store_true", help="source quarters 1-2 choose, target quarters 3-4 evaluate")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    src, tgt = torch.load(args.source), torch.load(args.target)
    if src["names"] != tgt["names"]:
        raise SystemExit("error: the two files come from models with different blocks")
    result = {"source": str(args.source), "target": str(args.target), "split": args.split, "ranks": {}}
    for rank in [int(r) for r in args.rank.split(",")]:
        tot = {"signal": 0.0, "signal_in": 0.0, "noise": 0.0, "noise_in": 0.0, "dims": 0, "dims_in": 0}
        for j, name in enumerate(src["names"]):
            q = [m[j].float() for m in src["means"]]
            if q[0].ndim != 2:
                continue
            G = (q[0] + q[1]) / 2 if args.split else sum(q) / 4
            U, _, Vh = torch.linalg.svd(G, full_matrices=False)
            U, V = U[:, :rank], Vh[:rank].T
            t = [m[j].float() for m in tgt["means"]]
            a, b = (t[2], t[3]) if args.split else ((t[0] + t[1]) / 2, (t[2] + t[3]) / 2)
            n = t[2] - t[3] if args.split else t[0] - t[1]
            P = lambda X: U.T @ X @ V  # coordinates of the projection (its norm is the projection's)
            tot["signal"] += float((a * b).sum())
            tot["signal_in"] += float((P(a) * P(b)).sum())
            tot["noise"] += float((n * n).sum())
            tot["noise_in"] += float((P(n) ** 2).sum())
            tot["dims"] += G.numel()
            tot["dims_in"] += rank * rank
        f_signal, f_noise = tot["signal_in"] / tot["signal"], tot["noise_in"] / tot["noise"]
        row = {**tot, "signal_fraction": f_signal, "noise_fraction": f_noise, "dims_fraction": tot["dims_in"] / tot["dims"],
               "one_step_gain_vs_mezo": f_signal / f_noise if f_noise > 0 else None}
        result["ranks"][rank] = row
        print(json.dumps({"rank": rank, **{k: row[k] for k in ("signal_fraction", "noise_fraction", "dims_fraction",
                                                               "one_step_gain_vs_mezo")}}), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
