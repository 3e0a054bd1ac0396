"""The direction-policy ablation grid (PertNN alone, with a fixed open gate, with the learned policy; LDSD
released vs corrected; Greedy) and the GV-M2 check (GV with two candidates against MeZO with a doubled step), at an
equal number of forward passes per run.

    python benchmarks/direction_eval.py --tuner T.safetensors --task bigbench:strategyqa --out DIR \
        [--arms mezo,greedy,...] [--forwards 160] [--lr 3e-5] [--seeds 0,1,2] [--batch-size 8] [--n-test 200]

``T`` is a tuner meta-trained with ``--direction-policy``. Arms (every run gets the same forward budget, so
the number of steps is ``forwards // passes-per-step``):

* ``mezo``: MeZO, 2 passes a step;
* ``greedy``: MeZO + argmin over 4 candidates (MeZO-Greedy), 5 passes;
* ``ldsd-released``: LDSD (k = 4, σ = 1) with the public code's noise/loss mis-pairing, 5 passes;
* ``ldsd``: LDSD with the corrected pairing, 5 passes;
* ``pertnn``: the tuner's PertNN bank alone (its policy removed), 2 passes;
* ``pertnn+mean``: the same bank with every gate at a constant ``--gate`` (an online mean, not learned), 2 passes;
* ``pertnn+policy``: the tuner as meta-trained (PertNN + the learned gates), 2 passes;
* ``gv2``: MeZO-GV with M = 2 candidates, 4 passes;
* ``mezo-2x``: MeZO with twice the lr and √2 times the eps, 2 passes: what GV-M2 equals in expectation.

Writes ``DIR/runs.json`` after every run (a rerun skips what is there; processes with different ``--seeds``
may share DIR) and ``DIR/summary.md``: test loss and accuracy after fine-tuning (mean ± std over seeds), the
final training loss, the wall-clock time and the extra optimizer memory of each arm; ``DIR/loss.png``, the
training-loss curves against forward passes. (No "forwards to a target loss": the training loss of 8-example
minibatches is too noisy at this budget for the first crossing of a target to mean anything.)
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import Tuner  # noqa: E402
from finetune.bench import append_run, final_loss, mean_test_loss, plot, read_runs, summarise  # noqa: E402
from finetune.data.models import name_for_id  # noqa: E402
from finetune.trainer import FinetuneConfig, prepare, train  # noqa: E402

# arm -> (FinetuneConfig overrides, lr multiplier, eps multiplier, parameter-sized state buffers)
ARMS: dict[str, tuple[dict, float, float, int]] = {
    "mezo": (dict(method="mezo"), 1.0, 1.0, 0),
    "greedy": (dict(method="greedy", candidates=4), 1.0, 1.0, 0),
    "ldsd-released": (dict(method="ldsd", ldsd_k=4, ldsd_rule="released"), 1.0, 1.0, 1),
    "ldsd": (dict(method="ldsd", ldsd_k=4), 1.0, 1.0, 1),
    "pertnn": (dict(method="tuner"), 1.0, 1.0, 0),
    "pertnn+mean": (dict(method="tuner"), 1.0, 1.0, 1),
    "pertnn+policy": (dict(method="tuner"), 1.0, 1.0, 1),
    "gv2": (dict(method="gv", candidates=2), 1.0, 1.0, 0),
    "mezo-2x": (dict(method="mezo"), 2.0, math.sqrt(2), 0),
}


def summary(runs: list[dict], arms: list[str], param_bytes: int) -> str:
    lines = ["| arm | steps | forwards | final train loss | test loss after (mean ± std) | test loss per seed | "
             "accuracy after (mean ± std) | seconds per run | extra memory |", "|---|---|---|---|---|---|---|---|---|"]
    before = runs[0]["test_loss"]["before"] if runs else math.nan
    acc_before = runs[0]["eval"]["before"] if runs else math.nan
    for arm in arms:
        rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if not rs:
            continue
        loss = [r["test_loss"]["after"] for r in rs]
        acc = [r["eval"]["after"] for r in rs]
        per_seed = ", ".join(f"{x:.4f}" for x in loss)
        seconds = statistics.fmean(r["seconds"] for r in rs)
        extra = ARMS[arm][3] * param_bytes
        train = [final_loss(r) for r in rs]
        lines.append(f"| {arm} | {rs[0]['steps']} | {rs[0]['forwards']} | {statistics.fmean(train):.4f} ± "
                     f"{statistics.pstdev(train):.4f} | {statistics.fmean(loss):.4f} ± "
                     f"{statistics.pstdev(loss):.4f} | {per_seed} | {statistics.fmean(acc):.3f} ± "
                     f"{statistics.pstdev(acc):.3f} | {seconds:.0f} | {extra / 2**20:.0f} MiB |")
    lines.append("")
    lines.append(f"Before fine-tuning: test loss {before:.4f}, accuracy {acc_before:.3f}. Seeds: "
                 f"{sorted({r['seed'] for r in runs})}. Final train loss: mean over the last 10% of steps (minibatches of the run's own order, so noisy). Seconds: wall-clock time of the training steps (evaluation excluded), as measured, also when processes shared the CPU. Extra memory: parameter-sized optimizer state "
                 "(LDSD's μ, the policy's online mean), not measured peaks.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tuner", required=True, help="a tuner meta-trained with --direction-policy")
    p.add_argument("--task", required=True)
    p.add_argument("--model", default=None, help="default: the tuner's base model")
    p.add_argument("--out", required=True)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--forwards", type=int, default=160, help="forward passes per run (default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--gate", type=float, default=0.5, help="the constant gate of arm pertnn+mean")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm {unknown[0]}; use some of {','.join(ARMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tuner = Tuner.from_pretrained(args.tuner)
    if tuner.policy is None:
        p.error(f"{args.tuner} has no direction policy; meta-train one with --direction-policy")
    files = {"pertnn+policy": args.tuner, "pertnn": out / "pertnn-only.safetensors",
             "pertnn+mean": out / f"constant-gate-{args.gate:g}.safetensors"}
    if not files["pertnn"].exists():
        tuner.without_policy().save_pretrained(files["pertnn"])
    if not files["pertnn+mean"].exists():
        const = replace(tuner, policy=Tuner.from_pretrained(args.tuner).policy.set_constant_(args.gate))
        const.save_pretrained(files["pertnn+mean"])

    model_name = args.model or name_for_id(tuner.base_model)
    base = FinetuneConfig(model=model_name, task=args.task, batch_size=args.batch_size, n_test=args.n_test,
                          threads=args.threads, n_dev=0, lr=args.lr, eps=args.eps)
    task, model, _, scorer = prepare(base)
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def test_loss() -> float:
        return mean_test_loss(scorer, model, task.test)

    loss_before = test_loss()
    log = out / "runs.json"
    for arm in arms:
        overrides, lr_mult, eps_mult, _ = ARMS[arm]
        for seed in [int(x) for x in args.seeds.split(",")]:
            if any((r["arm"], r["seed"]) == (arm, seed) for r in read_runs(log)):
                continue
            cfg = replace(base, seed=seed, lr=args.lr * lr_mult, eps=args.eps * eps_mult, **overrides,
                          tuner=str(files[arm]) if arm in files else None)
            cfg.steps = args.forwards // cfg.forwards_per_step
            model.load_state_dict(pristine)
            result = train(cfg, model, scorer, task, progress=False)
            run = {"arm": arm, "method": cfg.method, "lr": cfg.lr, "eps": cfg.eps, "seed": seed, "steps": cfg.steps,
                   "forwards": result.forwards, "train_loss": result.train_loss,
                   "eval": {"before": result.eval_before, "after": result.eval_after},
                   "test_loss": {"before": loss_before, "after": test_loss()}, "seconds": result.seconds}
            append_run(log, run)
            print(f"{arm:>14} seed {seed}: {cfg.steps} steps, {result.forwards} forwards, test loss "
                  f"{loss_before:.4f} -> {run['test_loss']['after']:.4f}, {task.metric} {result.eval_before:.3f} -> "
                  f"{result.eval_after:.3f}, {result.seconds:.0f} s", flush=True)
    runs = read_runs(log)
    text = (f"# Direction ablation: {tuner.base_model} on {task.name}, {args.forwards} forward passes per run, "
            f"batch {args.batch_size}, lr {args.lr:g}\n\n" + summary(runs, [a for a in ARMS if a in {r['arm'] for r in runs}], param_bytes))
    (out / "summary.md").write_text(text)
    by_arm = [r | {"method": r["arm"]} for r in runs]
    plot(by_arm, summarise(by_arm), out / "loss.png", f"{tuner.base_model} on {task.name}, {args.forwards} forward passes")
    print(text)


if __name__ == "__main__":
    main()
