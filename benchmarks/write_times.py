"""The part of a step that differs between MeZO, Sparse-MeZO, HiZOO and LOZO: one write of every block's perturbed
values (as the forward hooks write them: whole blocks, an output head a few rows at a time) and one update,
on SmolLM2-135M with table noise and 1 thread, minimum of 3 repeats after a warm-up::

    python benchmarks/write_times.py

docs/methods.md ("Speed") quotes its numbers.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.data.models import load_model, set_threads  # noqa: E402
from finetune.zo.baselines import LOZO, HiZOO, SparseMeZO  # noqa: E402
from finetune.zo.engine import Direction  # noqa: E402
from finetune.zo.optim import ZOSGD  # noqa: E402
set_threads(1)
model, _ = load_model("smollm2-135m")
opts = {"mezo": ZOSGD(model, lr=1e-12, eps=1e-3), "sparse-mezo": SparseMeZO(model, lr=1e-12, eps=1e-3),
        "hizoo": HiZOO(model, lr=1e-12, eps=1e-3), "lozo": LOZO(model, lr=1e-12, eps=1e-3)}
def direction(name, opt, seed, c=1.0):
    if name == "mezo":
        return Direction([(seed, c)])
    if name == "lozo":
        return Direction([(seed, c)], noise=opt.noise())
    return Direction([(seed, c)], multipliers=opt.multipliers)
@torch.no_grad()
def write_all(opt, d, alpha):
    e = opt.engine
    r = e.resolve(d)
    heads = {i: m for m, i in e._heads}
    for i, (_, p) in enumerate(e.blocks):
        w = p.detach()
        if i in heads:
            width = w.shape[1]
            rows = max(1, e.noise.chunk // width)
            buf = torch.empty(rows * width)
            flat = w.reshape(-1)
            for r0 in range(0, w.shape[0], rows):
                r1 = min(r0 + rows, w.shape[0])
                e._write(flat[r0 * width: r1 * width], r, i, alpha, buf[: (r1 - r0) * width], at=r0 * width)
        else:
            buf = e._scratch(w)
            e._write(w, r, i, alpha, buf)
            e._recycle(buf)
@torch.no_grad()
def update(name, opt, seed):
    g = 0.5
    if name in ("mezo", "lozo"):
        opt.engine.update_(direction(name, opt, seed, g), -1e-12)
    elif name == "sparse-mezo":
        opt._apply(opt.param_groups[0], Direction([(seed, g)], multipliers=opt.multipliers))
    else:
        opt._pending = (seed, g, 1e-3)
        opt._apply(opt.param_groups[0], None)
res = {n: ([], []) for n in opts}
for rep in range(4):
    for n, opt in opts.items():
        t0 = time.perf_counter(); write_all(opt, direction(n, opt, 7 + rep), 1e-3); t1 = time.perf_counter()
        update(n, opt, 7 + rep); t2 = time.perf_counter()
        if rep:
            res[n][0].append(t1 - t0); res[n][1].append(t2 - t1)
for n, (w, u) in res.items():
    print(f"{n:12s} write {min(w):.3f} s  update {min(u):.3f} s  (min of {len(w)})")
