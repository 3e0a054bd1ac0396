"""Section 18's held-out runs: tuner v2 with the top-block step (``--top-lr 3e-4``) against tuner v2, FZOO and
MeZO on the held-out packaged tasks, paired by seed.

    python reports/tuner-v2-smollm2/top_held_out.py [> reports/tuner-v2-smollm2/top-held-out/compare.md]

Reads ``top-held-out/<task>/tuner-v2-top-3e-4-s<seed>/metrics.json`` (stage top-held-out of run.sh) and the other
arms' runs from the packaged-tasks report (``reports/packaged-tasks-smollm2/runs``, the runs its ``paired.py``
reads). Checks that every arm of a seed starts from the same test split (the same accuracy and loss before
training and the same calibration reference) and that within an arm the runs differ only in seed, threads and the
task's name; prints :func:`finetune.bench.paired_table` with tuner v2 first, then with FZOO first.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from finetune.bench import ARM_FREE_KEYS, paired_table, recorded_config  # noqa: E402

PACKAGED = HERE.parent / "packaged-tasks-smollm2" / "runs"
TOP = HERE / "top-held-out"
SEEDS = (0, 1, 2)
TASKS = ("vader-polarity", "city-country", "city-continent")
FREE = {*ARM_FREE_KEYS, "task"}


def folders(task: str) -> dict[str, Path]:
    """Arm -> the folder of seed ``{}``; word polarity's MeZO and tuner v2 runs sit at the top of ``runs/``."""
    top = "" if task == "vader-polarity" else f"{task}/"
    return {"tuner v2": PACKAGED / f"{top}tuner-v2-s{{}}", "tuner v2 + top 3e-4": TOP / task / "tuner-v2-top-3e-4-s{}",
            "FZOO": PACKAGED / task / "fzoo-3e-3-s{}", "MeZO": PACKAGED / f"{top}mezo-3e-5-s{{}}"}


def read(task: str) -> dict[str, dict[int, dict]]:
    arms = {}
    for arm, pattern in folders(task).items():
        paths = {s: Path(str(pattern).format(s)) / "metrics.json" for s in SEEDS}
        arms[arm] = {s: json.loads(p.read_text()) for s, p in paths.items() if p.is_file()}
    return arms


def start(m: dict) -> tuple:
    return m["eval"]["n"], m["eval"]["before"], m["eval"]["loss_before"], json.dumps(m["calibration"]["test"],
                                                                                     sort_keys=True)


def check(task: str, arms: dict[str, dict[int, dict]], seeds: list[int]) -> None:
    for arm, runs in arms.items():
        configs = [{k: v for k, v in recorded_config(runs[s]["config"]).items() if k not in FREE} for s in seeds]
        if any(c != configs[0] for c in configs):
            sys.exit(f"{task}, {arm}: the runs differ in more than seed, threads and the task's name")
    for s in seeds:
        if len({start(arms[a][s]) for a in arms}) != 1:
            sys.exit(f"{task}, seed {s}: the arms do not start from the same test split")


def main() -> None:
    print("# The top-block step on the held-out packaged tasks, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/top_held_out.py`. Tuner v2 as shipped with and without "
          "`--top-lr 3e-4`, FZOO 3e-3 and MeZO 3e-5; 1000 passes (FZOO 999), batch 8, fp32.\n")
    for task in TASKS:
        print(f"## {task}\n")
        arms = read(task)
        missing = {a: sorted(set(SEEDS) - set(r)) for a, r in arms.items() if set(SEEDS) - set(r)}
        if missing:
            print(f"Not run (or not finished): {missing}.\n")
        seeds = sorted(set.intersection(*(set(r) for r in arms.values())))
        if len(seeds) < 2:
            print("Fewer than two seeds with every arm: no paired table.\n")
            continue
        arms = {a: {s: r[s] for s in seeds} for a, r in arms.items()}
        check(task, arms, seeds)
        for first in ("tuner v2", "FZOO"):
            order = [first] + [a for a in arms if a != first]
            print(f"Arms: {', '.join(order)}.\n")
            print(paired_table([arms[a] for a in order]))
            print()


if __name__ == "__main__":
    main()
