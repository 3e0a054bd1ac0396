r"""Section 27's held-out runs of stage exact-head-held-out: `--method exact` at its own lrs (head lr 1e-3, chosen in
section 26; top lr 1e-3; both decaying linearly) on the five held-out settings, against all-linear, exact at head lr
3e-4 (section 24) and FZOO at the schedule its dev loss chose, paired by seed.

    python reports/tuner-v2-smollm2/exact_head_held_out.py > \
        reports/tuner-v2-smollm2/top-held-out/exact-head-compare.md

Reads ``top-held-out/<setting>/exact-1e-3-1e-3-linear-s<seed>/metrics.json`` and the other arms as
``exact_held_out.py`` does, with the packaged-tasks report's checks. The reading of run.sh, fixed before the runs:
section 24's reading with this arm in place of exact at 3e-4 (the ZO step pays for its passes if all-linear is ahead
in accuracy with an interval excluding zero on at least three of the five settings), and the paired differences from
exact at 3e-4, reported as they are.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from exact_held_out import EXACT, summary_rows  # noqa: E402
from exact_held_out import read as read_exact  # noqa: E402
from no_zo_held_out import ALL  # noqa: E402
from top_held_out import TASKS, TOP, load, packaged_paired, paired_diff, seed_table  # noqa: E402

OWN = "exact (head 1e-3, top 1e-3, linear)"


def main() -> None:
    print("# The exact steps alone at their own lrs on the held-out packaged tasks, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/exact_head_held_out.py`. `--method exact --head-lr 1e-3 "
          "--top-lr 1e-3 --top-schedule linear --schedule linear --steps 1000` (the head lr chosen on the "
          "meta-training tasks, section 26) against all-linear, exact at head lr 3e-4 (section 24) and FZOO 3e-3 at "
          "the schedule its final dev loss chose; batch 8, fp32, 1000 passes. Only seeds both arms finished are "
          "paired.\n")
    rows = []
    for task in TASKS:
        print(f"## {task}\n")
        arms, why = read_exact(task)
        arms |= load({OWN: TOP / task / "exact-1e-3-1e-3-linear-s{}"})
        print(seed_table(arms))
        fzoo = next(a for a in arms if a.startswith("FZOO"))
        pairs = {other: sorted(set(arms[OWN]) & set(arms[other])) for other in (ALL, EXACT, fzoo)}
        if not any(pairs.values()):
            print("Not run yet.\n")
            continue
        for other, both in pairs.items():
            packaged_paired.check(task, {OWN: arms[OWN], other: arms[other]}, both)
        rows.append((task, pairs, *(paired_diff(arms[OWN], arms[other], pairs[other], key)
                                    for other in (ALL, EXACT, fzoo) for key in ("after", "loss_after"))))
    print("## Summary: exact at head lr 1e-3 minus each arm\n")
    print("Each difference over the seeds both arms finished (the seeds column: with all-linear / exact at 3e-4 / "
          "FZOO).\n")
    print("| setting | seeds | Δ accuracy vs all-linear [95% CI] | Δ test loss vs all-linear | Δ accuracy vs exact "
          "at 3e-4 | Δ test loss vs exact at 3e-4 | Δ accuracy vs FZOO (chosen schedule) | Δ test loss vs FZOO | "
          "all-linear ahead (accuracy interval below 0) |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary_rows(rows)


if __name__ == "__main__":
    main()
