"""Section 18's screen: tuner v2 with and without the top-block step on two meta-training tasks, seed 0; and section
20's, the same with the step's lr decaying linearly to 0 (``--top-schedule linear``).

    python reports/tuner-v2-smollm2/top_screen.py [> reports/tuner-v2-smollm2/top-screen/screen.md]

Reads ``top-screen/<task>/tuner-v2[-top-<lr>]-s0/metrics.json`` (``finetune`` runs); tuner v2 alone on word-class is
the head-lr bench of stage packaged-select (``head-select-packaged/packaged-word-class/head-lr-0.0003/seed-0``), the
same run: checked here by its first step's losses, which every arm of a task shares (the top-block step applies
after the step's passes). Prints each arm's final dev loss, test loss and accuracy, and the rule fixed in run.sh
before the runs: the top lr with the lower mean final dev loss over the two tasks is carried to the held-out tasks
if it beats tuner v2's final dev loss on both. Section 20's rule, fixed in run.sh before its runs: of the four top
arms (constant and linear), the one with the lowest mean final dev loss; a linear arm that also beats tuner v2's final
dev loss on both tasks goes to the held-out tasks.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ("word-class", "noun-number")
TOP_LRS = ("1e-4", "3e-4")
DECAY_LRS = ("3e-4", "1e-3")  # section 20: --top-schedule linear
BENCH = HERE / "head-select-packaged" / "packaged-word-class" / "head-lr-0.0003" / "seed-0" / "bench.json"


def arms(task: str) -> dict[str, dict]:
    """Arm -> {"dev_loss", "test_loss", "test", "first"} for the arms that finished."""
    out = {}
    if task == "word-class":
        run = json.loads(BENCH.read_text())["runs"][0]
        out["tuner v2"] = {**run["curve"][-1], "first": run["train_loss"][0]}
    for name, folder in [("tuner v2", "tuner-v2-s0")] + [(f"+ top {lr}", f"tuner-v2-top-{lr}-s0") for lr in TOP_LRS] \
            + [(f"+ top {lr} linear", f"tuner-v2-top-{lr}-linear-s0") for lr in DECAY_LRS]:
        path = HERE / "top-screen" / task / folder / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text())
            out[name] = {**m["curve"][-1], "first": m["train_loss"][0]}
    firsts = {a: r["first"] for a, r in out.items()}
    # within 1e-5 (relative): section 20's runs ran on another CPU, whose forward passes differ from the earlier
    # sessions' by about 1e-7 (the same split, batches and noise, not the same bits)
    if max(firsts.values()) - min(firsts.values()) > 1e-5 * max(firsts.values()):
        sys.exit(f"{task}: the arms' first steps differ ({firsts}): not the same split, batches and noise")
    return out


def mean_dev(table: dict[str, dict[str, dict]], arm: str) -> float:
    """``arm``'s final dev loss averaged over the screen's tasks (``table``: task -> :func:`arms`)."""
    return statistics.mean(table[t][arm]["dev_loss"] for t in TASKS)


def verdict(table: dict[str, dict[str, dict]]) -> tuple[str, bool]:
    """The rule fixed in run.sh before the screen, on a ``table`` holding every arm: the top lr with the lower mean
    final dev loss, and whether it beats tuner v2's final dev loss on every task."""
    best = min(TOP_LRS, key=lambda lr: mean_dev(table, f"+ top {lr}"))
    return best, all(table[t][f"+ top {best}"]["dev_loss"] < table[t]["tuner v2"]["dev_loss"] for t in TASKS)


def decay_verdict(table: dict[str, dict[str, dict]]) -> tuple[str, bool]:
    """Section 20's rule, fixed in run.sh before its runs, on a ``table`` holding every arm: the top arm (constant
    or linear) with the lowest mean final dev loss, and whether it is a linear arm that beats tuner v2's final dev
    loss on every task."""
    candidates = [f"+ top {lr}" for lr in TOP_LRS] + [f"+ top {lr} linear" for lr in DECAY_LRS]
    best = min(candidates, key=lambda arm: mean_dev(table, arm))
    return best, best.endswith("linear") and all(table[t][best]["dev_loss"] < table[t]["tuner v2"]["dev_loss"]
                                                 for t in TASKS)


def main() -> None:
    print("# The top-block step screened on two meta-training tasks (seed 0, 1000 passes)\n")
    print("Written by `python reports/tuner-v2-smollm2/top_screen.py`. Final dev loss, test loss, test accuracy.\n")
    print("| task | arm | dev loss | test loss | test accuracy |\n|---|---|---|---|---|")
    table = {t: arms(t) for t in TASKS}
    for task, rows in table.items():
        for arm, r in rows.items():
            print(f"| {task} | {arm} | {r['dev_loss']:.4f} | {r['test_loss']:.4f} | {r['test']:.3f} |")
    done = [lr for lr in TOP_LRS if all(f"+ top {lr}" in table[t] for t in TASKS)]
    if len(done) < len(TOP_LRS) or not all("tuner v2" in table[t] for t in TASKS):
        print("\nNot every arm has finished: no verdict.")
        return
    best, wins = verdict(table)
    print(f"\nLower mean final dev loss: top lr {best}; it {'beats' if wins else 'does not beat'} tuner v2's final dev "
          f"loss on both tasks, so the rule {'carries it to the held-out tasks' if wins else 'stops it here'}.")
    if not all(f"+ top {lr} linear" in table[t] for lr in DECAY_LRS for t in TASKS):
        print("\nSection 20's linear arms have not all finished: no verdict on them.")
        return
    best, wins = decay_verdict(table)
    print(f"\nSection 20 (the top lr decaying linearly): the lowest mean final dev loss of the four top arms is "
          f"`{best}` ({mean_dev(table, best):.4f}); "
          + ("a linear arm that beats tuner v2's final dev loss on both tasks: it goes to the held-out tasks."
             if wins else "the rule does not carry the decay to the held-out tasks."))


if __name__ == "__main__":
    main()
