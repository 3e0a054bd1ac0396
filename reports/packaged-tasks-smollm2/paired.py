"""The held-out comparisons of this report, paired by seed (issue 17's arms on packaged tasks).

    python reports/packaged-tasks-smollm2/paired.py [> reports/packaged-tasks-smollm2/held-out-compare.md]

For each held-out task, the arms MeZO (3e-5), FZOO (3e-3, N = 8) and tuner v2 as shipped (and on the first three tasks
n-SPSA, 1e-4, q = 4, and GV, 3e-5, where they have two seeds or more; an arm with fewer seeds than the others gets
tables of its own, over its seeds, beside MeZO and FZOO; on the first three tasks every other ZO method of issue 13
and fo as well), seeds 0-2, and the same three arms on word polarity on a derivative checkpoint
(``vader-polarity-derivative``), from ``runs/`` (each run's ``metrics.json``); printed with
:func:`finetune.bench.paired_table`, the table of ``cli.py compare --vs``: MeZO first, then FZOO first. ``cli.py
compare`` itself refuses these runs as runs of different tasks,
because the first runs read a JSONL file with the task's rows and the later ones the ``packaged:<name>`` spec (the
same rows and splits: tests/test_packaged_tasks.py checks that a spec and its rows' file split alike). So this script
checks what the spec would have: every run of one seed starts from the same test split (the same test accuracy and
loss before training, to the last bit, and the same calibration reference), and within an arm the runs differ only in
seed, threads and the task's name. Below the tables of a task, the ZO baselines with every seed are ranked by mean
test accuracy (a tie: the lower mean test loss).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from finetune.bench import ARM_FREE_KEYS, paired_table, recorded_config  # noqa: E402

RUNS = HERE / "runs"
SEEDS = (0, 1, 2)
BASE = (("MeZO", "mezo-3e-5"), ("FZOO", "fzoo-3e-3"))
MORE = (("n-SPSA", "nspsa-1e-4"), ("GV", "gv-3e-5"))  # run on seed 0 first, seeds 1-2 later (README)
V2 = (("tuner v2", "tuner-v2"),)


def rest(hizoo_lr: str) -> tuple:
    """The other ZO methods of issue 13 on the first three tasks (seed 0 first, seeds 1-2 on 2026-12-07) and the fo
    reference; HiZOO at the lr its seed-0 dev loss preferred on the task."""
    return (("Sparse-MeZO", "sparse-mezo-3e-5"), ("LOZO", "lozo-1e-5"), ("BCD", "bcd-3e-4"),
            ("HiZOO", f"hizoo-{hizoo_lr}"), ("ZO-Adam", "zo-adam-1e-3"), ("Greedy", "greedy-1e-5"),
            ("LDSD", "ldsd-1e-5"), ("fo", "fo-1e-5"))

NOT_ZO = {"fo", "tuner v2"}  # the arms that are not ZO baselines


def _arms(folder: str, arms) -> dict[str, str]:
    return {a: f"{folder}/{d}-s{{}}" for a, d in arms}


ARMS = {  # setting -> arm -> the folder of seed s, as a format string (or, where the seeds' folders differ, by seed)
    # word polarity's first runs (2026-12-05) are at the top of runs/: MeZO's and tuner v2's seeds, fo's seed 0
    "vader-polarity": {"MeZO": "mezo-3e-5-s{}", **_arms("vader-polarity", BASE[1:] + MORE + rest("1e-4")),
                       "fo": {0: "fo-1e-5-s0", 1: "vader-polarity/fo-1e-5-s1", 2: "vader-polarity/fo-1e-5-s2"},
                       "tuner v2": "tuner-v2-s{}"},
    "city-country": _arms("city-country", BASE + MORE + rest("3e-5") + V2),
    "city-continent": _arms("city-continent", BASE + MORE + rest("3e-5") + V2),
    "city-hemisphere": _arms("city-hemisphere", BASE + V2),
    # word polarity on a derivative checkpoint of the base model (benchmarks/make_derivative.py, python-docs)
    "vader-polarity-derivative": _arms("vader-polarity-derivative", BASE + V2),
}
FREE = {*ARM_FREE_KEYS, "task"}  # the arms of `cli.py compare`, and the task's name (see above)


def read(task: str) -> dict[str, dict[int, dict]]:
    arms = {}
    for arm, pattern in ARMS[task].items():
        runs = {}
        for s in SEEDS:
            path = RUNS / (pattern[s] if isinstance(pattern, dict) else pattern.format(s)) / "metrics.json"
            if path.is_file():
                runs[s] = json.loads(path.read_text())
        arms[arm] = runs
    return arms


def start(m: dict) -> tuple:
    """What a run's test split looks like before training: its size, accuracy and loss, and calibration reference."""
    return m["eval"]["n"], m["eval"]["before"], m["eval"]["loss_before"], m["calibration"]["test"]


def same_start(a, b, rel: float = 1e-4) -> bool:
    """Whether two :func:`start` records agree: exactly in what is not a float, within ``rel`` (relative) in what is.
    Runs made on another CPU compute the same forward passes with differences of about 1e-7 (relative): the same
    split, batches and noise seeds, not the same bits; the derivative checkpoint rebuilt there by the same command
    starts 4e-5 (relative) away in test loss, the same accuracy (reports/tuner-v2-smollm2, section 20)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_start(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_start(a[k], b[k], rel) for k in a)
    return a == b


def check(task: str, arms: dict[str, dict[int, dict]], seeds: list[int]) -> None:
    for arm, runs in arms.items():
        configs = [{k: v for k, v in recorded_config(runs[s]["config"]).items() if k not in FREE} for s in seeds]
        if any(c != configs[0] for c in configs):
            sys.exit(f"{task}, {arm}: the runs differ in more than seed, threads and the task's name")
    for s in seeds:
        first, *rest = [start(arms[a][s]) for a in arms]
        if not all(same_start(first, other) for other in rest):
            sys.exit(f"{task}, seed {s}: the arms do not start from the same test split")


def main() -> None:
    print("# Held-out packaged tasks: MeZO, FZOO, tuner v2 and the other arms where they ran, paired by seed\n")
    print("Written by `python reports/packaged-tasks-smollm2/paired.py` from `runs/`.\n")
    for task in ARMS:
        print(f"## {task}\n")
        arms = read(task)
        missing = {a: sorted(set(SEEDS) - set(r)) for a, r in arms.items() if set(SEEDS) - set(r)}
        if missing:
            print(f"Not run (or not finished): {missing}.\n")
        arms = {a: r for a, r in arms.items() if len(r) >= 2}  # an arm with fewer than two seeds is left out
        full = {a: r for a, r in arms.items() if set(SEEDS) <= set(r)}
        if len(full) >= 2:  # arms with fewer seeds than these get tables of their own, so the others keep all seeds
            tables(task, full, sorted(SEEDS))
            best = best_baseline(full)
            if best not in (None, "MeZO", "FZOO"):  # the tables with the best baseline first as well
                tables(task, full, sorted(SEEDS), firsts=(best,))
            for arm, runs in arms.items():
                if arm not in full:
                    print(f"{arm} ran seeds {sorted(runs)} only: its tables, over those seeds.\n")
                    tables(task, {**{a: r for a, r in full.items() if a in ("MeZO", "FZOO")}, arm: runs}, sorted(runs))
            continue
        seeds = sorted(set.intersection(*(set(r) for r in arms.values()))) if arms else []
        if len(arms) < 2 or len(seeds) < 2:
            print("Fewer than two arms with two seeds in common: no paired table.\n")
            continue
        tables(task, arms, seeds)


def best_baseline(arms: dict[str, dict[int, dict]]) -> str | None:
    """Prints the ZO baselines with every seed, best first: mean test accuracy, ties broken by the lower mean test
    loss (the rule written in run.sh before city-country's seeds of 2026-12-07); returns the best (None: fewer than
    two)."""
    zo = {a: r for a, r in arms.items() if a not in NOT_ZO}
    if len(zo) < 2:
        return None
    means = {a: (statistics.fmean(r[s]["eval"]["after"] for s in SEEDS),
                 statistics.fmean(r[s]["eval"]["loss_after"] for s in SEEDS)) for a, r in zo.items()}
    order = sorted(means, key=lambda a: (-means[a][0], means[a][1]))
    print(f"ZO baselines with seeds {', '.join(map(str, SEEDS))}, by mean test accuracy (test loss): "
          + "; ".join(f"{a} {means[a][0]:.3f} ({means[a][1]:.4f})" for a in order)
          + f". Best: {order[0]}.\n")
    return order[0]


def tables(task: str, arms: dict[str, dict[int, dict]], seeds: list[int], firsts=("MeZO", "FZOO")) -> None:
    """The paired tables of ``arms`` over ``seeds`` (checked first), one with each of ``firsts`` first (the arms
    listed before it in ``ARMS`` left out)."""
    arms = {a: {s: r[s] for s in seeds} for a, r in arms.items()}
    check(task, arms, seeds)
    for first in firsts:
        listed = [a for a in ARMS[task] if a in arms]
        order = listed[listed.index(first):] if first in listed else []
        if len(order) < 2:
            continue
        print(f"Arms: {', '.join(order)}.\n")
        print(paired_table([arms[a] for a in order]))
        print()


if __name__ == "__main__":
    main()
