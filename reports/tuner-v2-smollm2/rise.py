"""Section 22: which step drives the late rise of the training loss (stage rise), on the META-TRAINING task
word-class.

    python reports/tuner-v2-smollm2/rise.py [> reports/tuner-v2-smollm2/rise/rise.md]

Reads the benches of stage rise (``rise/<arm>-s<seed>/bench.json``: the shipped file's configuration with the ZO and
head lrs decaying (``decay``), with the ZO step moving nothing (``no-zo``) or without the head step (``no-head``)) and
the paired runs of stage top-seeds (``top-cli/packaged-word-class/top-lr-<lr>[-linear]/seed-<n>/``: tuner v2 alone
and the shipped configuration). Prints each run's final dev loss, test loss and accuracy, the training loss's 50-step
means, and its rise: the last 50-step mean minus the lowest (the rule of run.sh: an arm whose rise on seed 1 is
below 0.1 takes away what drives it). Then stage decay-screen's table (the decay arm on both meta-training tasks,
seeds 0-2, against the shipped configuration's runs of stage top-seeds) and its rule, with stage no-zo-screen's arm
(``rise/no-zo-decay[-<task>]-s<seed>``: ZO lr 0, every lr decaying) and its reading once it has run; with
``--verdict`` the exit status is 0 only if the rule sends decay to the held-out settings.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
SCREEN_TASKS = ("word-class", "noun-number")
TOP = HERE / "top-cli" / "packaged-word-class"
ARMS = {  # arm -> bench folder for a seed
    "tuner v2 (no top step)": lambda s: TOP / "top-lr-0" / f"seed-{s}",
    "shipped (ZO, head constant; top 1e-3 linear)": lambda s: TOP / "top-lr-0.001-linear" / f"seed-{s}",
    "decay (ZO, head, top all linear)": lambda s: HERE / "rise" / f"decay-s{s}",
    "no-zo (ZO lr 0)": lambda s: HERE / "rise" / f"no-zo-s{s}",
    "no-head (head lr 0)": lambda s: HERE / "rise" / f"no-head-s{s}",
}


def run_of(folder: Path) -> dict | None:
    path = folder / "bench.json"
    return json.loads(path.read_text())["runs"][0] if path.is_file() else None


def means50(run: dict) -> list[float]:
    loss = run["train_loss"]
    return [statistics.mean(loss[i:i + 50]) for i in range(0, len(loss), 50)]


def main() -> None:
    print("| arm | seed | final dev loss | test loss | test acc. | lowest 50-step mean | last | rise | 50-step means |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in (1, 2):
        for arm, folder in ARMS.items():
            run = run_of(folder(seed))
            if run is None:
                continue
            m = means50(run)
            last = run["curve"][-1]
            print(f"| {arm} | {seed} | {last['dev_loss']:.4f} | {last['test_loss']:.4f} | {last['test']:.3f} | "
                  f"{min(m):.2f} | {m[-1]:.2f} | {m[-1] - min(m):+.2f} | {' '.join(f'{v:.2f}' for v in m)} |")


SCREEN_ARMS = ("shipped", "decay", "no-zo-decay")  # no-zo-decay: stage no-zo-screen (ZO lr 0, every lr decaying)


def screen_runs(task: str, arm: str) -> list[dict | None]:
    """Seeds 0-2 of ``arm`` (one of :data:`SCREEN_ARMS`) on a meta-training task."""
    if arm == "shipped":
        return [run_of(HERE / "top-cli" / f"packaged-{task}" / "top-lr-0.001-linear" / f"seed-{s}") for s in SEEDS]
    stem = arm if task == "word-class" else f"{arm}-{task}"
    return [run_of(HERE / "rise" / f"{stem}-s{s}") for s in SEEDS]


def screen_means() -> dict[str, float]:
    """Arm (:data:`SCREEN_ARMS`) -> its mean final dev loss over the six meta-training runs of stages decay-screen
    and no-zo-screen (means over seeds, then tasks), for the arms whose runs have all finished."""
    means = {}
    for arm in SCREEN_ARMS:
        runs = {t: screen_runs(t, arm) for t in SCREEN_TASKS}
        if all(r for t in SCREEN_TASKS for r in runs[t]):
            means[arm] = statistics.mean(statistics.mean(r["curve"][-1]["dev_loss"] for r in runs[t])
                                         for t in SCREEN_TASKS)
    return means


def screen() -> bool | None:
    """Stage decay-screen's table and rule: decay goes to the held-out settings if its mean final dev loss over the
    six meta-training runs (means over seeds, then tasks) is below the shipped configuration's. None: not finished."""
    print("\nStage decay-screen: final dev loss / test accuracy on the two meta-training tasks, seeds 0 / 1 / 2.\n")
    print("| arm | " + " | ".join(f"{t} seed {s}" for t in SCREEN_TASKS for s in SEEDS) + " | mean dev loss |")
    print("|---|" + "---|" * 7)
    means = screen_means()
    for arm in SCREEN_ARMS:
        cells = [f"{r['curve'][-1]['dev_loss']:.4f} / {r['curve'][-1]['test']:.3f}" if r else "-"
                 for t in SCREEN_TASKS for r in screen_runs(t, arm)]
        print(f"| {arm} | " + " | ".join(cells) + (f" | {means[arm]:.4f} |" if arm in means else " | - |"))
    if "no-zo-decay" in means:
        print(f"\nStage no-zo-screen: the exact steps alone, every lr decaying, {means['no-zo-decay']:.4f} against "
              f"{means['decay']:.4f} with the ZO step: the ZO step's contribution beside them is "
              + ("not measurable on these tasks." if means["no-zo-decay"] <= means["decay"] else
                 f"{means['no-zo-decay'] - means['decay']:.4f} in mean final dev loss."))
    if "decay" not in means:
        print("\nNot every run has finished: no verdict.")
        return None
    passes = means["decay"] < means["shipped"]
    print(f"\nRule: decay's mean {means['decay']:.4f} against the shipped configuration's {means['shipped']:.4f}: "
          + ("decay goes to the held-out settings." if passes else "decay stops here."))
    return passes


if __name__ == "__main__":
    main()
    verdict = screen()
    if "--verdict" in sys.argv:
        sys.exit(0 if verdict else 1)
