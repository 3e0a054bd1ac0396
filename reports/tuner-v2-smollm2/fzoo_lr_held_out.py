"""Section 25's stage fzoo-lr-held-out of run.sh: FZOO, the best baseline, at an lr of its own on each held-out
setting (every FZOO run before it used 3e-3, carried from the baselines report), chosen on dev loss; then the tuner
arms against FZOO at its best configuration, paired by seed.

    python reports/tuner-v2-smollm2/fzoo_lr_held_out.py [> reports/tuner-v2-smollm2/top-held-out/fzoo-lr-compare.md]
    python reports/tuner-v2-smollm2/fzoo_lr_held_out.py next SETTING     # the seed-0 lr to run next, or nothing
    python reports/tuner-v2-smollm2/fzoo_lr_held_out.py choice SETTING   # the seed-0 choice, once bracketed

Reads FZOO's constant-lr runs ``top-held-out/<setting>/fzoo-<lr>-s<seed>`` (this stage) and
``reports/packaged-tasks-smollm2/runs/<setting>/fzoo-<lr>-s<seed>`` (earlier ones: 3e-3 on seeds 0-2, and 1e-3 and
1e-2 on city-country's seed 0), and the other arms as ``exact_held_out.py`` does, with the packaged-tasks report's
checks. The rule of run.sh, fixed before the runs:

1. Seed 0 (a screen): the grid is the factors of about 3 in :data:`GRID`, starting at 1e-3 beside the carried 3e-3,
   extended by one neighbour at a time until the lr with the lowest final DEV loss has a worse neighbour run on each
   side (or sits at the grid's end). That lr is the seed-0 choice.
2. Where the choice is not 3e-3, seeds 1 and 2 run at it.
3. FZOO's configuration on a setting is the one with the lowest mean final dev loss over seeds 0-2 among 3e-3
   constant, 3e-3 linear (section 23) and the chosen lr, constant. No test figure enters any choice.
4. Each tuner arm (v2-top-linear, the recommended file; all-linear; exact) against it: paired differences in test
   accuracy and test loss with 95% intervals, and "no worse" (mean accuracy no lower, mean test loss no higher).
"""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from baselines_decay import against  # noqa: E402
from decay_held_out import SHIPPED, SHORT  # noqa: E402
from decay_held_out import read as read_decay  # noqa: E402
from exact_held_out import EXACT  # noqa: E402
from exact_held_out import read as read_exact  # noqa: E402
from finetune.bench import final_value  # noqa: E402
from top_held_out import PACKAGED, SEEDS, TASKS, TOP, common_seeds_table, load, seed_table  # noqa: E402

GRID = ("1e-4", "3e-4", "1e-3", "3e-3", "1e-2", "3e-2")
CARRIED, FIRST = "3e-3", "1e-3"
TUNERS = (*SHORT.values(), EXACT)


def constant_runs(task: str) -> dict[str, dict[int, dict]]:
    """lr -> seed -> metrics of FZOO's finished constant-lr runs on ``task`` (this stage's folder first); a run that
    stopped on divergence (run.sh leaves a ``DIVERGED`` file with its error in its folder) is ``{"diverged": ...}``."""
    out = {}
    for lr in GRID:
        runs = load({"new": TOP / task / f"fzoo-{lr}-s{{}}", "old": PACKAGED / task / f"fzoo-{lr}-s{{}}"})
        runs = runs["old"] | runs["new"]
        for s in SEEDS:
            if (mark := TOP / task / f"fzoo-{lr}-s{s}" / "DIVERGED").is_file():
                runs[s] = {"diverged": mark.read_text().strip()}
        if runs:
            out[lr] = runs
    return out


def dev(run: dict) -> float:
    """The final dev loss; infinite for a run that diverged (worse than any that finished)."""
    return math.inf if "diverged" in run else final_value(run, "dev_loss")


def screen(grid: dict[str, dict[int, dict]]) -> tuple[str | None, str | None]:
    """(the seed-0 lr to run next, the seed-0 choice) from a setting's :func:`constant_runs`: one of them is None.
    Step 1 of the rule."""
    seed0 = {lr: dev(r[0]) for lr, r in grid.items() if 0 in r}
    for lr in (CARRIED, FIRST):
        if lr not in seed0:
            return lr, None
    best = min(seed0, key=seed0.get)
    i = GRID.index(best)
    for j in (i - 1, i + 1):
        if 0 <= j < len(GRID) and GRID[j] not in seed0:
            return GRID[j], None
    return None, best


def fzoo_arms(arms: dict[str, dict[int, dict]], grid: dict[str, dict[int, dict]], best: str) -> dict[str, dict]:
    """FZOO's three candidate configurations (step 3), named as the tables show them, from ``read_exact``'s arms
    (both schedules) and the constant-lr ``grid``; the seed-0 choice ``best`` has an arm of its own unless it is the
    carried lr."""
    out = {"FZOO 3e-3": arms["FZOO"], "FZOO 3e-3 linear": arms["FZOO linear"]}
    if best != CARRIED:
        out[f"FZOO {best}"] = grid[best]
    return out


def choose(fzoo: dict[str, dict[int, dict]]) -> tuple[str | None, str]:
    """Step 3: the configuration with the lowest mean final dev loss over seeds 0-2 (only those with all three)."""
    full = {a: statistics.fmean(dev(r[s]) for s in SEEDS) for a, r in fzoo.items() if set(SEEDS) <= set(r)}
    if len(full) < len(fzoo):
        return None, f"not every configuration has seeds 0-2 ({ {a: sorted(r) for a, r in fzoo.items()} })"
    best = min(full, key=full.get)
    return best, ", ".join(f"{a} {v:.4f}" for a, v in full.items()) + f" → {best}"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("next", "choice"):
        print(screen(constant_runs(sys.argv[2]))[sys.argv[1] == "choice"] or "")
        return
    print("# FZOO at an lr of its own on the held-out packaged tasks, and the tuners against it, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/fzoo_lr_held_out.py`. FZOO (N = 8, 111 steps, 999 passes) at a "
          "constant lr from the grid " + ", ".join(GRID) + " on seed 0, bracketed on final dev loss; seeds 1-2 at the "
          "seed-0 choice; FZOO's configuration per setting: the lowest mean final dev loss over seeds 0-2 among 3e-3 "
          "constant, 3e-3 linear and the chosen lr. Tuner arms as in exact-compare.md. Batch 8, fp32.\n")
    rows = []
    for task in TASKS:
        print(f"## {task}\n")
        grid = constant_runs(task)
        print("Seed 0, constant lr: " + ", ".join(
            f"{lr} " + ("diverged" if "diverged" in r[0] else f"dev {dev(r[0]):.4f}")
            for lr, r in grid.items() if 0 in r) + ".")
        nxt, best = screen(grid)
        if best is None:
            print(f"Not bracketed yet (next: {nxt}).\n")
            continue
        print(f"Seed-0 choice: {best}.\n")
        arms = read_exact(task, chosen=False)[0]
        fzoo = fzoo_arms(arms, grid, best)
        pick, why = choose(fzoo)
        print(f"FZOO's configuration: {why}.\n")
        for a, r in fzoo.items():  # a diverged run counts in the choice (above), not in the tables
            if bad := sorted(s for s in r if "diverged" in r[s]):
                print(f"{a} diverged on seed(s) {', '.join(map(str, bad))}: {r[bad[0]]['diverged']}\n")
                fzoo[a] = {s: m for s, m in r.items() if s not in bad}
        arms[SHORT[SHIPPED]] = read_decay(task)[SHIPPED]
        arms = {a: arms[a] for a in TUNERS} | fzoo
        print(seed_table(arms))
        if pick is None:
            continue
        group = common_seeds_table(task, {a: arms[a] for a in (pick, *TUNERS)}, pick)
        if group is None:
            continue
        both = sorted(next(iter(group.values())))
        acc = {a: statistics.fmean(group[a][s]["eval"]["after"] for s in both) for a in group}
        rows.append((task, pick, both, acc, [against(group[t], group[pick], both) for t in TUNERS]))
    if not rows:
        return
    print("## Summary: each tuner arm against FZOO at its chosen configuration\n")
    print("| setting | FZOO | seeds | FZOO accuracy | " + " | ".join(
        f"{t} accuracy | {t} − FZOO: accuracy; test loss | no worse?" for t in TUNERS) + " |")
    print("|---|---|---|---|" + "---|---|---|" * len(TUNERS))
    for task, pick, both, acc, cells in rows:
        print(f"| {task} | {pick.removeprefix('FZOO ')} | {', '.join(map(str, both))} | {acc[pick]:.3f} | "
              + " | ".join(f"{acc[t]:.3f} | {c} | {'yes' if ok else 'no'}" for t, (c, ok) in zip(TUNERS, cells))
              + " |")
    print()
    for i, t in enumerate(TUNERS):
        print(f"- {t}: no worse than FZOO at its chosen configuration on {sum(r[4][i][1] for r in rows)} of "
              f"{len(rows)} settings.")


if __name__ == "__main__":
    main()
