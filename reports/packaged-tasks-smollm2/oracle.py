"""The oracle of issue 17 (item 3) on the held-out packaged tasks: the head lr each task's own dev split picks.

    python reports/packaged-tasks-smollm2/oracle.py [--seed 0] [task ...] [> reports/packaged-tasks-smollm2/oracle.md]

Tuner v2 is MeZO (3e-5) plus the head step at the lr its meta-training chose, 3e-4 (`tuner-v2-s<seed>`). The oracle
applies the same rule, the lowest final dev loss over the grid 1e-4 / 3e-4 / 1e-3 / 3e-3, to the held-out task
itself (`oracle-h<lr>-s<seed>`: MeZO 3e-5 with `--head-lr <lr>`). It reads the target task's dev split, so it is an
upper bound on what a carried head lr can give, not a tuner. Printed per task: every head lr's final dev loss,
test loss and accuracy (MeZO as head lr 0); the pick and whether a worse lr was run on each side of it; and the
share of the oracle's gain over MeZO that tuner v2 keeps. Every run of a task and seed must start from the same test
split (screen.py's check, on all of them, not only the arms read here).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from screen import same_split_runs  # noqa: E402  (every finished run of one task and seed, split-checked)

TASKS = ("vader-polarity", "city-country", "city-continent", "city-hemisphere")
GRID = (1e-4, 3e-4, 1e-3, 3e-3)
TUNER_HEAD_LR = 3e-4


def fmt(lr: float) -> str:
    """An lr as the run folders spell it: 1e-3, 3e-4."""
    return f"{lr:.0e}".replace("e-0", "e-")


def head_arms(task: str, seed: int) -> tuple[dict | None, dict[float, dict]]:
    """(MeZO's run, {head lr: run}) of one task and seed: tuner v2 at its 3e-4, the oracle runs at theirs."""
    runs, arms = same_split_runs(task, seed), {}
    expected = {"tuner-v2": ("tuner", TUNER_HEAD_LR), **{f"oracle-h{fmt(lr)}": ("mezo", lr) for lr in GRID}}
    for name, (method, lr) in expected.items():
        if name in runs:
            if abs(runs[name]["head_lr"] - lr) > 1e-12 or runs[name]["method"] != method:
                sys.exit(f"{task}: {name} is not method {method} with head lr {fmt(lr)}")
            arms.setdefault(lr, runs[name])  # tuner v2 first: it is the run at 3e-4
    return runs.get("mezo-3e-5"), arms


def dev_loss(m: dict) -> float:
    return m["curve"][-1]["dev_loss"]


def report(task: str, seed: int) -> tuple[str, str | None]:
    """(the task's section, its summary row or None)."""
    mezo, arms = head_arms(task, seed)
    if mezo is None or len(arms) < 2:
        return f"## {task}, seed {seed}\n\nNot enough runs (MeZO and two head lrs are needed).\n", None
    lines = [f"## {task}, seed {seed}\n", "| head lr | final dev loss | test loss | test accuracy |",
             "|---|---|---|---|"]
    for lr, m in [(0.0, mezo), *sorted(arms.items())]:
        name = "0 (MeZO)" if lr == 0 else fmt(lr) + (" (tuner v2)" if lr == TUNER_HEAD_LR else "")
        lines.append(f"| {name} | {dev_loss(m):.4f} | {m['eval']['loss_after']:.4f} | {m['eval']['after']:.3f} |")
    pick = min(arms, key=lambda lr: dev_loss(arms[lr]))
    ran = sorted(arms)
    i = ran.index(pick)
    inside = 0 < i < len(ran) - 1  # a worse lr ran on each side
    bracketed = inside or pick == (GRID[0] if i == 0 else GRID[-1])  # else at the end of what ran, not of the grid
    edge = "" if inside else " (at the end of the grid)" if bracketed else \
        " (NOT bracketed: a neighbouring lr of the grid did not run)"
    lines.append(f"\nOracle head lr (lowest final dev loss): **{fmt(pick)}**{edge}; tuner v2's: {fmt(TUNER_HEAD_LR)}.")
    kept = []
    for key, sign, label in (("loss_after", -1, "test loss"), ("after", 1, "accuracy")):
        g_o = sign * (arms[pick]["eval"][key] - mezo["eval"][key])
        g_t = sign * (arms[TUNER_HEAD_LR]["eval"][key] - mezo["eval"][key]) if TUNER_HEAD_LR in arms else None
        share = "n/a (the oracle does not gain)" if g_o <= 0 or g_t is None else f"{g_t / g_o:.0%}"
        kept.append(share)
        lines.append(f"- {label}: gain over MeZO, oracle {g_o:+.4f}, tuner v2 "
                     f"{'–' if g_t is None else f'{g_t:+.4f}'}; tuner v2 keeps {share}")
    o, t = arms[pick]["eval"], arms.get(TUNER_HEAD_LR, {}).get("eval")
    row = (f"| {task} | {fmt(pick)}{'' if bracketed else ' (not bracketed)'} | {mezo['eval']['loss_after']:.3f} / "
           f"{t['loss_after']:.3f} / **{o['loss_after']:.3f}** | {mezo['eval']['after']:.3f} / {t['after']:.3f} / "
           f"**{o['after']:.3f}** | {kept[0]}, {kept[1]} |" if t else None)
    return "\n".join(lines) + "\n", row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("tasks", nargs="*", default=list(TASKS))
    args = ap.parse_args()
    sections, rows = zip(*(report(t, args.seed) for t in args.tasks))
    print(f"# The oracle head lr on the held-out packaged tasks, seed {args.seed}\n")
    print("Written by `python reports/packaged-tasks-smollm2/oracle.py` from `runs/`.\n")
    print("| held-out task | oracle head lr | test loss: MeZO / tuner v2 / oracle | accuracy: MeZO / tuner v2 / oracle "
          "| share of the oracle's gain tuner v2 keeps (test loss, accuracy) |")
    print("|---|---|---|---|---|")
    print("\n".join(r for r in rows if r))
    print()
    print("\n".join(sections))


if __name__ == "__main__":
    main()
