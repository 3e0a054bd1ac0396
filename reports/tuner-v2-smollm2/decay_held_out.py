"""Section 22's held-out runs (stage decay-held-out): the shipped configuration (tuner v2 plus the top-block step at
1e-3, linear) with the ZO and head lrs decaying linearly as well (``--schedule linear``), against the shipped
configuration, tuner v2, FZOO and MeZO on the five held-out settings, paired by seed.

    python reports/tuner-v2-smollm2/decay_held_out.py [> reports/tuner-v2-smollm2/top-held-out/decay-compare.md]

Reads ``top-held-out/<setting>/tuner-v2-top-1e-3-linear-decay-s<seed>/metrics.json`` and the other arms' runs as
``top_held_out.py`` does (with that script's checks: the same test split for every arm of a seed; within an arm, runs
that differ only in seed, threads and the task's name). Prints the paired tables with the shipped configuration
first (the rule of run.sh: the decaying configuration replaces it as the recommended one if, on each of the five
settings, its mean accuracy over the three seeds is no lower and its mean test loss lower), then with MeZO first
(issue 17's targets: forwards to MeZO's final test loss, accuracy against MeZO's) and with FZOO first, and the rule's
verdict.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from finetune.bench import forwards_to_target, paired_table  # noqa: E402
from top_held_out import SEEDS, TASKS, TOP, diff_text, folders, load, packaged_paired, paired_diff  # noqa: E402

SHIPPED, DECAY = "tuner v2 + top 1e-3 linear", "the same, ZO and head lrs decaying"
SHORT = {SHIPPED: "v2-top-linear", DECAY: "all-linear"}  # the names the summaries and the README use


def read(task: str) -> dict[str, dict[int, dict]]:
    pattern = {a: p for a, p in folders(task, "1e-3").items() if a != "tuner v2 + top 3e-4"}
    pattern = {SHIPPED if a.endswith("linear") else a: p for a, p in pattern.items()}
    pattern[DECAY] = TOP / task / "tuner-v2-top-1e-3-linear-decay-s{}"
    return load(pattern)


def summary(groups: dict[str, dict[str, dict[int, dict]]]) -> None:
    """One row per setting with three seeds: every arm's mean accuracy, the decaying configuration's paired
    differences from the shipped configuration and from FZOO (95% bootstrap intervals), and the forward passes each
    of its seeds needs to reach MeZO's final test loss on the same seed."""
    names = {"MeZO": "MeZO", "FZOO": "FZOO", "tuner v2": "tuner v2", **SHORT}
    print("## Summary (three seeds per setting)\n")
    print("| setting | " + " | ".join(names.values()) + " | Δ accuracy vs v2-top-linear | Δ test loss vs "
          "v2-top-linear | Δ accuracy vs FZOO | all-linear: forwards to MeZO's final test loss |")
    print("|---|" + "---|" * (len(names) + 4))

    def diff(key, arm, other):
        return diff_text(*paired_diff(arm, other, list(SEEDS), key), key)

    for task, group in groups.items():
        means = [f"{statistics.fmean(group[a][s]['eval']['after'] for s in SEEDS):.3f}" for a in names]
        mine = group[DECAY]
        reached = [forwards_to_target(mine[s], group["MeZO"][s]["eval"]["loss_after"]) for s in SEEDS]
        print(f"| {task} | " + " | ".join(means) + f" | {diff('after', mine, group[SHIPPED])} | "
              f"{diff('loss_after', mine, group[SHIPPED])} | {diff('after', mine, group['FZOO'])} | "
              + ", ".join("–" if f is None else str(f) for f in reached) + " |")
    print()


def main() -> None:
    print("# The decaying configuration on the held-out packaged tasks, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/decay_held_out.py`. The shipped configuration (tuner v2 plus "
          "`--top-lr 1e-3 --top-schedule linear`) with `--schedule linear` (its ZO and head lrs decay linearly to 0 "
          "as well), against the shipped configuration, tuner v2, FZOO 3e-3 and MeZO 3e-5; 1000 passes (FZOO 999), "
          "batch 8, fp32. Only seeds where every arm finished are paired.\n")
    verdict, full = {}, {}
    for task in TASKS:
        print(f"## {task}\n")
        arms = read(task)
        seeds = sorted(set.intersection(*(set(r) for r in arms.values())))
        if len(seeds) < 2:
            print(f"Fewer than two seeds finished by every arm ({ {a: sorted(r) for a, r in arms.items()} }).\n")
            continue
        group = {a: {s: r[s] for s in seeds} for a, r in arms.items()}
        packaged_paired.check(task, group, seeds)
        for first in (SHIPPED, "MeZO", "FZOO"):
            order = [first] + [a for a in group if a != first]
            print(f"Arms: {', '.join(order)}.\n")
            print(paired_table([group[a] for a in order]))
            print()
        if seeds == list(SEEDS):
            full[task] = group
            mean = {a: (statistics.fmean(group[a][s]["eval"]["after"] for s in seeds),
                        statistics.fmean(group[a][s]["eval"]["loss_after"] for s in seeds)) for a in (SHIPPED, DECAY)}
            verdict[task] = mean[DECAY][0] >= mean[SHIPPED][0] and mean[DECAY][1] < mean[SHIPPED][1]
            print(f"Rule on {task}: accuracy {mean[DECAY][0]:.3f} against {mean[SHIPPED][0]:.3f}, test loss "
                  f"{mean[DECAY][1]:.4f} against {mean[SHIPPED][1]:.4f}: "
                  + ("passes" if verdict[task] else "fails") + ".\n")
    if full:
        summary(full)
    if len(verdict) < len(TASKS):
        print(f"The rule has three seeds on {len(verdict)} of {len(TASKS)} settings: no decision.")
    else:
        print("Verdict: the decaying configuration " + ("replaces" if all(verdict.values()) else "does not replace")
              + " the shipped one as the recommended configuration (passes on "
              + f"{sum(verdict.values())} of {len(TASKS)} settings).")


if __name__ == "__main__":
    main()
