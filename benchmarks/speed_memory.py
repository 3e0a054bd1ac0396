"""Speed and memory of a MeZO step relative to plain inference, measured in one run.

    python benchmarks/speed_memory.py [--model smollm2-135m] [--task bigbench:strategyqa] [--batch-size 16]
                                      [--tuner checkpoints/pretrained/smollm2-135m.safetensors]

Prints two ratios (targets from the foundation issue):
  * step time / time of the step's two forward passes (target <= 1.2 on CPU), medians over interleaved
    repeats on the same batch;
  * peak memory of fine-tuning / peak memory of inference on the same batch (target <= 1.1), each the
    peak resident set size (Linux VmHWM, reset after loading and one warm-up call) of a fresh process
    running three forward passes or three MeZO steps; medians over ``--memory-runs`` processes per mode.
With ``--tuner``, also the time of a tuned step (the tuner's features and bank, then the step) relative to a
MeZO step, means over the repeats (the block statistics are refreshed every ``stats_every`` steps, so the
mean is the amortised cost; use ``--repeats`` of at least 10). A tuner with a head step (format 3) or a head race
(format 4, all its lanes) takes it in the timed step as fine-tuning does (watching the step's passes, then the
Adam step on the option rows), and so does one with a top-block step (format 5: the last MLP's local backward pass
and Adam step, Llama family); both need a task whose options are one token each, e.g.
``--task bigbench:cs_algorithms/valid_parentheses:Valid=valid,Invalid=invalid``. The memory measurement then
adds a third mode, fresh processes running three tuned steps (head and top-block steps included), against inference.

With ``--method NAME[,NAME...]`` (any ``finetune --method`` except tuner and fo, or ``all``), it measures instead, for
each method in one run, a step's time / the time of as many plain forward passes as the step makes (target <=
1.2 at batch 16 on SmolLM2, issue 13), medians over interleaved repeats on the same batch, and skips the memory
measurement::

    python benchmarks/speed_memory.py --model tiny-llama --method mezo,sparse-mezo,lozo,bcd,fzoo,hizoo
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data.models import load_model, set_threads  # noqa: E402
from finetune.zo.optim import ZOSGD  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.data.tasks import load_task  # noqa: E402


def setup(args):
    set_threads(args.threads)
    task = load_task(args.task, seed=0)
    model, tok = load_model(args.model)
    scorer = TaskScorer(tok, max_length=args.max_length)
    batch = task.train[: args.batch_size]
    return model, scorer, batch


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM), so the peak of model loading is not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def tuned_stepper(args, model, scorer, batch, closure):
    """(step, extras): ``step`` takes one step as fine-tuning with the ``--tuner`` artifact does, the tuned ZO
    step with its head step (format 3) or head race (format 4, every lane) and its top-block step (format 5)
    watching the step's passes, then stepping; ``extras`` names them (" with its head step", ""). Their lrs are near
    1e-12 like the timed MeZO step's: the work is real, the weights barely move."""
    from contextlib import ExitStack

    from checkpoints import Tuner
    from finetune.head import HeadRace, HeadStep
    from finetune.top import TopStep
    from finetune.zo.optim import TunedZO
    tuner = Tuner.from_pretrained(args.tuner)
    tuned = TunedZO(model, tuner, lr=1e-12, eps=1e-3, noise=args.noise)
    lanes = len(tuner.head_lrs)
    head = None
    if lanes == 1:
        head = HeadStep(model, scorer, 1e-12)
    elif lanes > 1:
        head = HeadRace(model, scorer, [1e-12 * (k + 1) for k in range(lanes)])
    top = TopStep(model, scorer, 1e-12) if tuner.top_lr else None
    steps = [x for x in (head, top) if x is not None]

    def step():
        with ExitStack() as watching:
            for x in steps:
                watching.enter_context(x.watching(batch))
            tuned.step(closure)
        for x in steps:
            x.step()
    extras = " and ".join(n for n, x in (("its head step", head), ("its top-block step", top)) if x is not None)
    return step, extras and " with " + extras


def memory_child(args) -> None:
    model, scorer, batch = setup(args)
    closure = lambda: scorer.loss(model, batch)  # noqa: E731
    if args.child == "inference":
        from finetune.zo.engine import ZOEngine
        engine = ZOEngine(model)
        run = lambda: engine.loss(closure)  # noqa: E731
    elif args.child == "tuned":
        run, _ = tuned_stepper(args, model, scorer, batch, closure)
    else:
        opt = ZOSGD(model, lr=1e-6, eps=1e-3, noise=args.noise)
        run = lambda: opt.step(closure)  # noqa: E731
    run()  # warm-up, then measure the peak of the work alone
    reset_peak_rss()
    for _ in range(3):
        run()
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def child_peak(mode: str, argv: list[str]) -> float:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", mode], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def method_speed(args) -> None:
    """Per method: median step time / median time of the step's own number of unperturbed forward passes."""
    import torch

    from finetune.trainer import METHODS, FinetuneConfig, make_run_optimizer

    # fo backpropagates, and exact's step is one plain forward pass: neither is a ZO step to time here
    zo = [m for m in METHODS if m not in ("tuner", "fo", "exact")]
    names = zo if args.method == "all" else args.method.split(",")
    unknown = [m for m in names if m not in zo]
    if unknown:
        raise SystemExit(f"error: --method {unknown[0]} is not timed here; use {', '.join(zo)} or all")
    model, scorer, batch = setup(args)
    closure = lambda: scorer.loss(model, batch)  # noqa: E731
    opts = {}
    for name in names:  # lr 1e-12: a real update pass that moves the weights by ~1e-12
        cfg = FinetuneConfig(model=args.model, method=name, lr=1e-12, eps=1e-3, noise=args.noise)
        cfg.validate()
        opts[name] = (make_run_optimizer(cfg, model), cfg.forwards_per_step)
    for opt, _ in opts.values():
        opt.step(closure)  # warm-up: tables, caches, allocator
    times = {name: ([], []) for name in names}
    for r in range(args.repeats):
        for name, (opt, passes) in opts.items():
            t0 = time.perf_counter()
            for _ in range(passes):
                opt.engine.loss(closure)
            t1 = time.perf_counter()
            opt.step(closure)
            t2 = time.perf_counter()
            times[name][0].append(t1 - t0)
            times[name][1].append(t2 - t1)
            print(f"repeat {r + 1}/{args.repeats} {name}: forwards {t1 - t0:.3f} s, step {t2 - t1:.3f} s, "
                  f"ratio {(t2 - t1) / (t1 - t0):.3f}", file=sys.stderr, flush=True)
    tokens = sum(len(e.prompt) for e in batch) // len(batch)
    print(f"model {args.model}, task {args.task}, batch {args.batch_size} (mean prompt {tokens} chars), "
          f"{torch.get_num_threads()} threads, noise {next(iter(opts.values()))[0].engine.noise.name}, "
          f"{args.repeats} repeats (medians)")
    for name, (fwd, step) in times.items():
        f, s = statistics.median(fwd), statistics.median(step)
        passes = opts[name][1]
        print(f"{name:>12}: {passes} forward passes {f:.3f} s   step {s:.3f} s   "
              f"SPEED RATIO step / own forwards = {s / f:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="bigbench:strategyqa")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--noise", default="auto", choices=["auto", "table", "gaussian"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-runs", type=int, default=3, help="fresh processes per mode for the memory ratio")
    p.add_argument("--tuner", default=None, help="also time a step driven by this tuner artifact")
    p.add_argument("--method", default=None, metavar="NAME[,NAME...]",
                   help="time each method's step against its own forward passes (all: every ZO method but tuner)")
    p.add_argument("--child", choices=["inference", "finetune", "tuned"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return memory_child(args)
    if args.method:
        return method_speed(args)

    import torch

    model, scorer, batch = setup(args)
    closure = lambda: scorer.loss(model, batch)  # noqa: E731
    opt = ZOSGD(model, lr=1e-6, eps=1e-3, noise=args.noise)
    engine = opt.engine
    engine.loss(closure)
    opt.step(closure)  # warm-up: tables, caches, allocator
    tuned_step, extras = None, ""
    if args.tuner:
        tuned_step, extras = tuned_stepper(args, model, scorer, batch, closure)
        tuned_step()  # warm-up
    fwd2, step, upd, tstep = [], [], [], []
    for _ in range(args.repeats):
        if tuned_step is not None:
            t0 = time.perf_counter()
            tuned_step()
            tstep.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine.loss(closure)
        engine.loss(closure)
        t1 = time.perf_counter()
        opt.step(closure)
        t2 = time.perf_counter()
        engine.update_(1, alpha=1e-12)  # a real noise pass; moves the weights by ~1e-12
        t3 = time.perf_counter()
        fwd2.append(t1 - t0)
        step.append(t2 - t1)
        upd.append(t3 - t2)
    f, s, u = statistics.median(fwd2), statistics.median(step), statistics.median(upd)
    tokens = sum(len(e.prompt) for e in batch) // len(batch)
    print(f"model {args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"task {args.task}, batch {args.batch_size} (mean prompt {tokens} chars), "
          f"{torch.get_num_threads()} threads, noise {engine.noise.name}, {args.repeats} repeats")
    print(f"two forward passes: {f:.3f} s   MeZO step: {s:.3f} s   one noise pass over all parameters: {u:.3f} s")
    print(f"SPEED RATIO step / two forwards = {s / f:.3f}   (target <= 1.2)")
    if tuned_step is not None:
        ts, ms = statistics.fmean(tstep), statistics.fmean(step)
        print(f"tuned step{extras} (mean of {len(tstep)}): {ts:.3f} s   "
              f"MeZO step (mean): {ms:.3f} s   TUNER RATIO tuned / MeZO step = {ts / ms:.3f}   (target <= 1.05)")

    # One process's peak RSS varies by tens of MB from run to run (the allocator's heap state), so each
    # mode runs in several fresh processes, interleaved, and the medians are compared.
    argv = [a for a in sys.argv[1:]]
    infs, fts, tus = [], [], []
    for _ in range(args.memory_runs):
        infs.append(child_peak("inference", argv))
        fts.append(child_peak("finetune", argv))
        if tuned_step is not None:
            tus.append(child_peak("tuned", argv))
    inf, ft = statistics.median(infs), statistics.median(fts)
    runs = lambda vs: " ".join(f"{v:.0f}" for v in vs)  # noqa: E731
    print(f"peak RSS (median of {args.memory_runs} processes each): inference {inf:.0f} MB [{runs(infs)}], "
          f"MeZO fine-tuning {ft:.0f} MB [{runs(fts)}] (+{ft - inf:.0f} MB)")
    print(f"MEMORY RATIO fine-tuning / inference = {ft / inf:.3f}   (target <= 1.1)")
    if tus:
        tu = statistics.median(tus)
        print(f"peak RSS of tuned fine-tuning{extras}: {tu:.0f} MB "
              f"[{runs(tus)}] (+{tu - inf:.0f} MB over inference)   "
              f"TUNER MEMORY RATIO tuned fine-tuning / inference = {tu / inf:.3f}   (target <= 1.1)")


if __name__ == "__main__":
    main()
