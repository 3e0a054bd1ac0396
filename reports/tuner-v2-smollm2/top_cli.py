"""Section 21: meta-train-top on SmolLM2 (stage top-cli), the warm-up screen (stage top-warmup-screen) and the choice
on three seeds (stage top-seeds).

    python reports/tuner-v2-smollm2/top_cli.py [> reports/tuner-v2-smollm2/top-cli/screen.md]

Reads the benches meta-train-top left under ``top-cli/packaged-<task>/top-lr-<lr>[-<schedule>]/seed-<n>/bench.json``
and the files it wrote (``top-cli/v2-top-linear[-warmup|-3seeds].safetensors``). Checks, fixed in run.sh before the
runs: the benches of 0, 3e-4 and 1e-3 (linear) end with the final dev losses of section 20's screen (``top-screen/``,
the same computation: within 1e-4 relative, this CPU's tolerance; each is printed with its difference); if the
command chose 1e-3 linear, its file holds the shipped v2-top-linear file's tensors, lr and schedule. Prints every
arm's final dev loss, test loss and accuracy and its early training loss (mean of the first 10 steps, largest of the
first 20); the warm-up rule (its chosen arm goes to the held-out settings only if its mean final dev loss is lower
than that of the best linear arm); and the seeds 0-2 table of stage top-seeds with the command's choice on them.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from safetensors import safe_open

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TASKS = ("word-class", "noun-number")
ARMS = {  # arm -> (bench folder, the section 20 screen run it must repeat, or None)
    "tuner v2": ("top-lr-0", "tuner-v2-s0"),
    "+ top 3e-4 linear": ("top-lr-0.0003-linear", "tuner-v2-top-3e-4-linear-s0"),
    "+ top 1e-3 linear": ("top-lr-0.001-linear", "tuner-v2-top-1e-3-linear-s0"),
    "+ top 3e-3 linear": ("top-lr-0.003-linear", None),
    "+ top 1e-3 linear-warmup": ("top-lr-0.001-linear-warmup", None),
    "+ top 3e-3 linear-warmup": ("top-lr-0.003-linear-warmup", None),
}
LINEAR = [a for a in ARMS if a.endswith(" linear")]
WARMUP = [a for a in ARMS if a.endswith("warmup")]
SEED_ARMS = ["tuner v2", "+ top 3e-4 linear", "+ top 1e-3 linear"]  # stage top-seeds: seeds 0-2
SHIPPED = ROOT / "checkpoints" / "pretrained" / "smollm2-135m-v2-top-linear.safetensors"


def run_of(task: str, folder: str, seed: int = 0) -> dict | None:
    path = HERE / "top-cli" / f"packaged-{task}" / folder / f"seed-{seed}" / "bench.json"
    return json.loads(path.read_text())["runs"][0] if path.is_file() else None


def screen_dev(task: str, folder: str) -> float:
    """The final dev loss of section 20's screen run (``word-class``'s tuner v2 alone: the head-lr bench)."""
    if task == "word-class" and folder == "tuner-v2-s0":
        bench = HERE / "head-select-packaged" / "packaged-word-class" / "head-lr-0.0003" / "seed-0" / "bench.json"
        return json.loads(bench.read_text())["runs"][0]["curve"][-1]["dev_loss"]
    return json.loads((HERE / "top-screen" / task / folder / "metrics.json").read_text())["curve"][-1]["dev_loss"]


def table() -> tuple[dict[str, dict[str, dict]], list[str]]:
    """task -> arm -> {"dev_loss", "test_loss", "test", "early", "peak"} for the arms that finished, and one line per
    repeated run: its final dev loss against section 20's screen's."""
    out: dict[str, dict[str, dict]] = {}
    checks = []
    for task in TASKS:
        out[task] = {}
        for arm, (folder, screen) in ARMS.items():
            run = run_of(task, folder)
            if run is None:
                continue
            last, loss = run["curve"][-1], run["train_loss"]
            if screen is not None:
                want = screen_dev(task, screen)
                rel = abs(last["dev_loss"] - want) / want
                checks.append(f"- {task}, {arm}: {last['dev_loss']:.6f} against {want:.6f}, {rel:.1e} relative: "
                              + ("within 1e-4" if rel <= 1e-4 else "**not within 1e-4**"))
            out[task][arm] = {**last, "early": statistics.mean(loss[:10]), "peak": max(loss[:20])}
    return out, checks


def mean_dev(rows: dict[str, dict[str, dict]], arm: str) -> float:
    return statistics.mean(rows[t][arm]["dev_loss"] for t in TASKS)


def tensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["zotune"])


def holds_shipped(mine: dict, doc: dict) -> bool:
    """Whether a tuner file's tensors (``mine``) and metadata (``doc``) hold the shipped v2-top-linear file's
    tensors, head step and top step."""
    shipped, ship_doc = tensors(SHIPPED)
    return (mine.keys() == shipped.keys() and all(bool((mine[k] == shipped[k]).all()) for k in mine)
            and doc["top"] == ship_doc["top"] and doc["head"] == ship_doc["head"])


def main() -> None:
    rows, checks = table()
    print("# meta-train-top on SmolLM2, and the warm-up screen (meta-training tasks, seed 0, 1000 passes)\n")
    print("Written by `python reports/tuner-v2-smollm2/top_cli.py`. Final dev loss, test loss and accuracy; the "
          "training loss's mean over the first 10 steps and its largest value in the first 20.\n")
    print("| task | arm | dev loss | test loss | test accuracy | first 10 steps | largest of first 20 |")
    print("|---|---|---|---|---|---|---|")
    for task, arms in rows.items():
        for arm, r in arms.items():
            print(f"| {task} | {arm} | {r['dev_loss']:.4f} | {r['test_loss']:.4f} | {r['test']:.3f} | "
                  f"{r['early']:.3f} | {r['peak']:.3f} |")
    both = [a for a in ARMS if all(a in rows[t] for t in TASKS)]
    print("\nMean final dev loss over the two tasks: "
          + ", ".join(f"{a} {mean_dev(rows, a):.4f}" for a in both) + ".")
    print("\nThe runs that repeat section 20's screen, final dev loss against the screen's (the check in run.sh: "
          "within 1e-4 relative):\n")
    print("\n".join(checks))
    chosen = HERE / "top-cli" / "v2-top-linear.safetensors"
    if chosen.is_file():
        mine, doc = tensors(chosen)
        top = doc["top"]
        line = f"\nmeta-train-top chose top lr {top['lr']:g} ({top.get('schedule')})"
        if top == {"lr": 1e-3, "schedule": "linear"}:
            if not holds_shipped(mine, doc):
                sys.exit(f"{chosen.name} chose the shipped step but does not hold the shipped file's tensors/steps")
            line += (": the shipped v2-top-linear file's choice; its tensors, head step and top step are the "
                     "shipped file's.")
        else:
            line += ": not the shipped file's choice (1e-3 linear); the shipped file stays as it is (run.sh)."
        print(line)
    if all(a in both for a in LINEAR + WARMUP):
        best_linear = min(LINEAR, key=lambda a: mean_dev(rows, a))
        best_warm = min(WARMUP, key=lambda a: mean_dev(rows, a))
        goes = mean_dev(rows, best_warm) < mean_dev(rows, best_linear)
        print(f"\nWarm-up rule (run.sh, before the runs): the best warm-up arm, `{best_warm}` "
              f"({mean_dev(rows, best_warm):.4f}), against the best linear arm, `{best_linear}` "
              f"({mean_dev(rows, best_linear):.4f}): "
              + ("lower, so it goes to the held-out settings." if goes else "not lower, so it stops here."))
    else:
        print("\nNot every linear and warm-up arm has finished: no warm-up verdict.")
    seeds()


def seeds() -> None:
    """Stage top-seeds: the final dev loss of 0, 3e-4 and 1e-3 linear on seeds 0-2, meta-train-top's choice over
    them (the mean over seeds, then tasks), and its file against the shipped one."""
    dev = {arm: {t: [run_of(t, ARMS[arm][0], seed) for seed in (0, 1, 2)] for t in TASKS} for arm in SEED_ARMS}
    print("\n## Seeds 0-2 (stage top-seeds): final dev loss\n")
    print("| arm | " + " | ".join(f"{t} seed {s}" for t in TASKS for s in (0, 1, 2)) + " | mean |")
    print("|---|" + "---|" * 7)
    means = {}
    for arm, per_task in dev.items():
        cells = [f"{r['curve'][-1]['dev_loss']:.4f}" if r else "-" for t in TASKS for r in per_task[t]]
        done = all(r for t in TASKS for r in per_task[t])
        if done:
            means[arm] = statistics.mean(statistics.mean(r["curve"][-1]["dev_loss"] for r in per_task[t])
                                         for t in TASKS)
        print(f"| {arm} | " + " | ".join(cells) + (f" | {means[arm]:.4f} |" if done else " | - |"))
    print("\nTest accuracy; the training loss's lowest 50-step mean and its last (a last well above the lowest is the "
          "late rise of sections 19-21):\n")
    print("| arm | " + " | ".join(f"{t} seed {s}" for t in TASKS for s in (0, 1, 2)) + " |")
    print("|---|" + "---|" * 6)
    for arm, per_task in dev.items():
        cells = []
        for t in TASKS:
            for r in per_task[t]:
                if r is None:
                    cells.append("-")
                    continue
                loss = r["train_loss"]
                means50 = [statistics.mean(loss[i:i + 50]) for i in range(0, len(loss), 50)]
                cells.append(f"{r['curve'][-1]['test']:.3f}; {min(means50):.2f} / {means50[-1]:.2f}")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    if len(means) < len(SEED_ARMS):
        print("\nNot every run has finished: no choice on three seeds.")
        return
    best = min(means, key=means.get)
    path = HERE / "top-cli" / "v2-top-linear-3seeds.safetensors"
    print(f"\nLowest mean over three seeds: `{best}` ({means[best]:.4f}).")
    if path.is_file():
        mine, doc = tensors(path)
        print(f"meta-train-top's file ({path.name}): top {doc['top']}; "
              + ("the shipped v2-top-linear file's tensors and steps." if holds_shipped(mine, doc)
                 else "not the shipped file's choice."))


if __name__ == "__main__":
    main()
