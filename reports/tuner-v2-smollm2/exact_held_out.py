"""Section 24's held-out runs of stage exact-held-out: `--method exact` (no ZO step; each step one plain forward pass
at theta, from which all-linear's head and top-block steps take their exact gradients; 1000 steps at 1000 passes)
against all-linear, all-linear with ZO lr 0, FZOO at the schedule its dev loss chose (section 23) and MeZO on the five
held-out settings, paired by seed.

    python reports/tuner-v2-smollm2/exact_held_out.py [> reports/tuner-v2-smollm2/top-held-out/exact-compare.md]

Reads ``top-held-out/<setting>/exact-3e-4-1e-3-linear-s<seed>/metrics.json`` and the other arms' runs as
``no_zo_held_out.py`` and ``baselines_decay.py`` do, with the packaged-tasks report's checks (the same test split for
every arm of a seed; within an arm, runs that differ only in seed, threads and the task's name). The reading of
run.sh, fixed before the runs: per setting, the paired differences of exact from all-linear in test accuracy and test
loss (95% bootstrap intervals over the seeds); the ZO step pays for its passes if all-linear is ahead in accuracy with
an interval excluding zero on at least three of the five settings.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from baselines_decay import choose  # noqa: E402
from finetune.bench import final_value  # noqa: E402
from finetune.common.runs import late_rise  # noqa: E402
from no_zo_held_out import ALL, NO_ZO  # noqa: E402
from no_zo_held_out import read as read_no_zo  # noqa: E402
from top_held_out import (TASKS, TOP, common_seeds_table, diff_text, load, packaged_paired, paired_diff,  # noqa: E402
                           seed_table)

EXACT = "exact (head 3e-4, top 1e-3, linear)"
NEEDED = 3  # settings where all-linear must be ahead for the ZO step to pay (run.sh's rule)


def read(task: str, chosen: bool = True) -> tuple[dict[str, dict[int, dict]], str]:
    """Arm -> seed -> metrics (FZOO at its chosen schedule only; with ``chosen=False`` both of FZOO's schedules), and
    the choice of FZOO's schedule in words."""
    arms = read_no_zo(task) | load({"FZOO linear": TOP / task / "fzoo-3e-3-linear-s{}",
                                    EXACT: TOP / task / "exact-3e-4-1e-3-linear-s{}"})
    pick, why = choose(arms, "FZOO")
    drop = {"FZOO", "FZOO linear"} - {pick} if chosen else set()
    return {a: r for a, r in arms.items() if a not in drop}, why


def fit_table(fits: list[tuple[str, dict[str, dict[int, dict]]]]) -> str:
    """Per setting and arm, means over the arm's seeds: accuracy, the training loss over the last tenth of the steps,
    the final dev and test losses, and the seeds whose training loss rose late (:func:`late_rise`), as Markdown."""
    lines = ["| setting | arm | seeds | accuracy | training loss, last tenth of the steps | final dev loss | "
             "test loss | late rises |", "|---|---|---|---|---|---|---|---|"]
    for task, arms in fits:
        for arm, runs in arms.items():
            ms = [runs[s] for s in sorted(runs)]
            tail = [statistics.fmean(m["train_loss"][-(len(m["train_loss"]) // 10):]) for m in ms]
            rises = [s for s in sorted(runs) if late_rise(runs[s]["train_loss"]) is not None]
            lines.append(f"| {task} | {arm} | {', '.join(map(str, sorted(runs)))} | "
                         f"{statistics.fmean(m['eval']['after'] for m in ms):.3f} | {statistics.fmean(tail):.3f} | "
                         f"{statistics.fmean(final_value(m, 'dev_loss') for m in ms):.3f} | "
                         f"{statistics.fmean(m['eval']['loss_after'] for m in ms):.3f} | "
                         f"{', '.join(map(str, rises)) or 'none'} |")
    return "\n".join(lines) + "\n"


def summary_rows(rows: list) -> None:
    """Print the summary's rows (setting, seeds per pair, the paired differences in accuracy and test loss against
    three arms, the first of them all-linear, and whether all-linear is ahead), then the count that run.sh's rule
    reads."""
    ahead = 0
    for task, pairs, *diffs in rows:
        ca = diffs[0][1]
        ahead += ca is not None and ca[1] < 0
        cells = [diff_text(m, ci, key) for (m, ci), key in zip(diffs, ("after", "loss_after") * 3)]
        seeds = " / ".join(",".join(map(str, s)) for s in pairs.values())
        print(f"| {task} | {seeds} | " + " | ".join(cells) + " | "
              + ("yes" if ca is not None and ca[1] < 0 else "no" if ca else "one seed: no interval") + " |")
    print(f"\nAll-linear ahead in accuracy (an interval excluding zero) on {ahead} of {len(TASKS)} settings; "
          f"run.sh's rule: the ZO step pays for its passes at {NEEDED} or more.")


def main() -> None:
    print("# The exact steps alone at equal forward passes on the held-out packaged tasks, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/exact_held_out.py`. `--method exact --head-lr 3e-4 --top-lr "
          "1e-3 --top-schedule linear --schedule linear --steps 1000` (no ZO step: one plain forward pass a step, 1000 "
          "passes) against all-linear (tuner v2 plus `--top-lr 1e-3 --top-schedule linear --schedule linear`, 500 "
          "two-point steps), all-linear with `--lr 0`, FZOO 3e-3 at the schedule its final dev loss chose (999 "
          "passes) and MeZO 3e-5; batch 8, fp32. Only seeds where every arm finished are paired.\n")
    rows, fits = [], []
    for task in TASKS:
        print(f"## {task}\n")
        arms, why = read(task)
        print(f"FZOO's schedule: {why}.\n")
        print(seed_table(arms))
        if common_seeds_table(task, arms, EXACT) is None:
            continue
        fzoo = next(a for a in arms if a.startswith("FZOO"))
        pairs = {other: sorted(set(arms[EXACT]) & set(arms[other])) for other in (ALL, NO_ZO, fzoo)}
        for other, both in pairs.items():
            packaged_paired.check(task, {EXACT: arms[EXACT], other: arms[other]}, both)
        fits.append((task, {a: arms[a] for a in (EXACT, ALL)}))
        rows.append((task, pairs, *(paired_diff(arms[EXACT], arms[other], pairs[other], key)
                                    for other in (ALL, NO_ZO, fzoo) for key in ("after", "loss_after"))))
    print("## Summary: exact minus each arm\n")
    print("Each difference over the seeds both arms finished (the seeds column: with all-linear / ZO lr 0 / FZOO).\n")
    print("| setting | seeds | Δ accuracy vs all-linear [95% CI] | Δ test loss vs all-linear | Δ accuracy vs ZO lr 0 | "
          "Δ test loss vs ZO lr 0 | Δ accuracy vs FZOO (chosen schedule) | Δ test loss vs FZOO | all-linear ahead "
          "(accuracy interval below 0) |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary_rows(rows)
    print("\n## How closely each arm fits its training set\n")
    print(fit_table(fits))


if __name__ == "__main__":
    main()
