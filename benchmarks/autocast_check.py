"""What ``--autocast bf16`` changes in a MeZO step, measured in one run: the time of a step (fp32 against
bf16 autocast, interleaved) and the SPSA estimate it computes (the projected gradient
``(L(θ+εz) − L(θ−εz)) / 2ε`` along the same directions, on the same batch, in both precisions).

    python benchmarks/autocast_check.py --task bigbench:multiemo/hotels_sentence_en:ambivalent=mixed --threads 1

A ZO step only needs the sign and size of that estimate; its spread across directions is the signal, the
gap between the two precisions along one direction is the error autocast adds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.data.batches import batches  # noqa: E402
from finetune.trainer import FinetuneConfig, compute_precision, make_run_optimizer, prepare  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="bigbench:multiemo/hotels_sentence_en:ambivalent=mixed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--directions", type=int, default=8, help="directions compared (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per precision and round (default %(default)s)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    cfg = FinetuneConfig(model=args.model, task=args.task, batch_size=args.batch_size, eps=args.eps, lr=0.0,
                         n_train=max(64, 4 * args.batch_size), n_dev=0, n_test=1, threads=args.threads)
    task, model, _, scorer = prepare(cfg)
    batch = next(batches(task.train, args.batch_size, 0))
    precisions = {"fp32": cfg, "bf16": FinetuneConfig(**{**cfg.__dict__, "autocast": "bf16"})}

    estimates: dict[str, list[float]] = {}
    for name, c in precisions.items():
        engine = make_run_optimizer(c, model).engine  # the run's engine (its noise); nothing is updated
        with compute_precision(c, model):
            estimates[name] = [engine.spsa(lambda: scorer.loss(model, batch), 1000 + k, args.eps).g
                               for k in range(args.directions)]
    a, b = estimates["fp32"], estimates["bf16"]
    corr = torch.corrcoef(torch.tensor([a, b], dtype=torch.float64))[0, 1].item()
    gap = statistics.pstdev([x - y for x, y in zip(a, b)])
    print(f"projected gradient along {args.directions} directions (fp32 | bf16):")
    for x, y in zip(a, b):
        print(f"  {x:10.3f} | {y:10.3f}")
    print(f"correlation {corr:.4f}; spread across directions {statistics.pstdev(a):.3f}; "
          f"fp32-bf16 gap (std) {gap:.3f}")

    times: dict[str, list[float]] = {name: [] for name in precisions}
    data = batches(task.train, args.batch_size, 1)
    for _ in range(2):  # interleaved rounds: the machine's load hits both alike
        for name, c in precisions.items():
            opt = make_run_optimizer(c, model)
            with compute_precision(c, model):
                opt.step(lambda b=next(data): scorer.loss(model, b))  # warm-up
                for _ in range(args.repeats):
                    b = next(data)
                    tick = time.perf_counter()
                    opt.step(lambda: scorer.loss(model, b))
                    times[name].append(time.perf_counter() - tick)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    print(f"MeZO step, batch {args.batch_size}: fp32 {fp32:.2f} s, bf16 autocast {bf16:.2f} s "
          f"(median of {len(times['fp32'])}); speed-up {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
