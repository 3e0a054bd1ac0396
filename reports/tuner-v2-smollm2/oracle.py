"""The oracle bound of tuner v2 on a held-out task: the head lr the target task's own dev split would choose.

    python reports/tuner-v2-smollm2/oracle.py --mezo MEZO_BENCH [--mezo-lr LR] --tuner-head-lr 3e-4 --head HEAD_BENCH [HEAD_BENCH ...]

Each HEAD_BENCH is a finished bench of MeZO plus the head step at one head lr (``--head-lr``, read from its config),
on the target task; MEZO_BENCH is the same task without it. All must share seed ``--seed`` (default 0). The
oracle is the head lr with the lowest final dev loss: what the tuner's own rule (meta-train-head) would pick if it
were allowed to look at the target task. Printed: every head lr's final dev loss, test loss and accuracy; the
oracle's; and the share of the oracle's gain over MeZO (test loss, accuracy) that the tuner's head lr keeps.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune.bench import final_value  # noqa: E402
from paired import arm  # noqa: E402  (the runs of one method and lr, by seed; diverged ones named and left out)


def run_of(folder: Path, seed: int, lr: float | None = None) -> tuple[float, dict]:
    """(head lr, the MeZO run of ``seed``, at ``lr`` if given) of a finished bench."""
    runs = arm([folder], "mezo", lr)
    if seed not in runs:
        sys.exit(f"{folder}: no finished mezo run of seed {seed}")
    head_lr = json.loads((folder / "bench.json").read_text())["config"]["base"].get("head_lr")
    return float(head_lr or 0.0), runs[seed]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mezo", type=Path, required=True)
    p.add_argument("--mezo-lr", type=float, default=None, help="MeZO's lr, when its bench holds a grid")
    p.add_argument("--head", type=Path, nargs="+", required=True)
    p.add_argument("--tuner-head-lr", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    _, mezo = run_of(args.mezo, args.seed, args.mezo_lr)
    arms = dict(run_of(f, args.seed) for f in args.head)
    if args.tuner_head_lr not in arms:
        sys.exit(f"no bench at the tuner's head lr {args.tuner_head_lr:g}")
    keys = ("dev_loss", "test_loss", "test")
    print(f"seed {args.seed}; MeZO: " + "  ".join(f"{k} {final_value(mezo, k):.4f}" for k in keys))
    for lr in sorted(arms):
        print(f"head lr {lr:<8g} " + "  ".join(f"{k} {final_value(arms[lr], k):.4f}" for k in keys))
    oracle = min(arms, key=lambda lr: final_value(arms[lr], "dev_loss"))
    tuner = args.tuner_head_lr
    print(f"oracle head lr (lowest final dev loss on this task): {oracle:g}; the tuner's: {tuner:g}")
    for key, sign in (("test_loss", -1), ("test", 1)):
        gain_o = sign * (final_value(arms[oracle], key) - final_value(mezo, key))
        gain_t = sign * (final_value(arms[tuner], key) - final_value(mezo, key))
        kept = f"{gain_t / gain_o:.0%}" if gain_o > 0 else "n/a (the oracle does not gain)"
        print(f"{key}: gain over MeZO, oracle {gain_o:+.4f}, tuner {gain_t:+.4f}; kept {kept}")


if __name__ == "__main__":
    main()
