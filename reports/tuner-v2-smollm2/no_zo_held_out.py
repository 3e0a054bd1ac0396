"""Section 23's held-out runs of stage no-zo-held-out: all-linear (tuner v2 plus the top-block step, every lr decaying)
with its ZO step moving nothing (``--lr 0``: the two forward passes a step still feed the head and top-block steps),
against all-linear itself, FZOO and MeZO on the five held-out settings, paired by seed.

    python reports/tuner-v2-smollm2/no_zo_held_out.py [> reports/tuner-v2-smollm2/top-held-out/no-zo-compare.md]

Reads ``top-held-out/<setting>/tuner-v2-top-1e-3-linear-decay-no-zo-s<seed>/metrics.json`` and the other arms' runs as
``decay_held_out.py`` does, with its checks (the same test split for every arm of a seed; within an arm, runs that
differ only in seed, threads and the task's name). The reading of run.sh, fixed before the runs: per setting, the
paired differences of the ZO-less arm from all-linear in test accuracy and test loss (95% bootstrap intervals over the
seeds); the ZO step is ahead on a setting only where an interval in its favour excludes zero.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from decay_held_out import DECAY, SHORT  # noqa: E402
from decay_held_out import read as read_decay  # noqa: E402
from top_held_out import TASKS, TOP, common_seeds_table, diff_text, load, paired_diff, seed_table  # noqa: E402

ALL = SHORT[DECAY]
NO_ZO = f"{ALL}, ZO lr 0"


def read(task: str) -> dict[str, dict[int, dict]]:
    arms = {ALL if a == DECAY else a: r for a, r in read_decay(task).items() if a in (DECAY, "FZOO", "MeZO")}
    return arms | load({NO_ZO: TOP / task / "tuner-v2-top-1e-3-linear-decay-no-zo-s{}"})


def main() -> None:
    print("# All-linear without its ZO step on the held-out packaged tasks, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/no_zo_held_out.py`. All-linear (tuner v2 plus `--top-lr 1e-3 "
          "--top-schedule linear --schedule linear`) with `--lr 0` (the ZO step moves nothing; its forward passes "
          "still feed the head and top-block steps), against all-linear, FZOO 3e-3 and MeZO 3e-5; 1000 passes (FZOO "
          "999), batch 8, fp32. Only seeds where every arm finished are paired.\n")
    rows = []
    for task in TASKS:
        print(f"## {task}\n")
        arms = read(task)
        print(seed_table(arms))
        group = common_seeds_table(task, arms, ALL)
        if group is None:
            continue
        seeds = sorted(group[ALL])
        rows.append((task, seeds, *(paired_diff(group[NO_ZO], group[ALL], seeds, key)
                                    for key in ("after", "loss_after"))))
    print("## Summary: ZO lr 0 minus all-linear\n")
    print("| setting | seeds | Δ accuracy [95% CI] | Δ test loss [95% CI] | "
          "the ZO step ahead (an interval excluding 0) |")
    print("|---|---|---|---|---|")
    for task, seeds, (da, ca), (dl, cl) in rows:
        ahead = (ca is not None and ca[1] < 0) or (cl is not None and cl[0] > 0)
        print(f"| {task} | {', '.join(map(str, seeds))} | {diff_text(da, ca, 'after')} | "
              f"{diff_text(dl, cl, 'loss_after')} | "
              + ("yes" if ahead else "no" if ca else "one seed: no interval") + " |")


if __name__ == "__main__":
    main()
