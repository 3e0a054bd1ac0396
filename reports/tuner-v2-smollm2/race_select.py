"""The head race on the meta-training tasks against the shipped v2 setting (MeZO 3e-5 + head step 3e-4), by final dev
loss (the rule in run.sh, stage race-select; the test split is not read). Prints one line per (task, seed), the
means over seeds then tasks, how many steps each raced lr held the rows, and the verdict.

    python reports/tuner-v2-smollm2/race_select.py --race reports/tuner-v2-smollm2/race-select \
        --head-select reports/tuner-v2-smollm2/head-select --head-lr 3e-4
"""
import argparse
import json
import math
from pathlib import Path

TASKS = {"hotels": "bigbench-multiemo-hotels_sentence_en-ambivalent-mixed", "hyperbaton": "bigbench-hyperbaton"}


def final_dev(folder: Path) -> tuple[float, dict]:
    (run,) = json.loads((folder / "bench.json").read_text())["runs"]
    if run.get("diverged"):
        return math.inf, run
    return run["curve"][-1]["dev_loss"], run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--race", type=Path, required=True)
    ap.add_argument("--head-select", type=Path, required=True)
    ap.add_argument("--head-lr", type=float, required=True)
    args = ap.parse_args()
    means = {"race": [], "v2": []}
    for name, slug in TASKS.items():
        per = {"race": [], "v2": []}
        for seed in (0, 1):
            race, run = final_dev(args.race / f"{name}-s{seed}")
            v2, _ = final_dev(args.head_select / slug / f"head-lr-{args.head_lr:g}" / f"seed-{seed}")
            held = run.get("head_race", {})
            print(f"{name} seed {seed}: race {race:.4f} (steps held {dict(zip(held.get('lrs', []), held.get('steps_active', [])))}, "
                  f"last {held.get('active')})  v2 {v2:.4f}")
            per["race"].append(race)
            per["v2"].append(v2)
        for k in per:
            means[k].append(sum(per[k]) / len(per[k]))
    race, v2 = (sum(means[k]) / len(means[k]) for k in ("race", "v2"))
    print(f"mean final dev loss: race {race:.4f}, v2 {v2:.4f}")
    print("verdict: " + ("the race goes to the held-out tasks" if race <= v2 and math.isfinite(race)
                         else "the race stays on the meta-training tasks"))


if __name__ == "__main__":
    main()
