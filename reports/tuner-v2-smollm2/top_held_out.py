"""Sections 18-20's held-out runs: tuner v2 with the top-block step (``--top-lr 3e-4``; section 20: the step's lr
decaying linearly, at the lr section 20's screen chose) against tuner v2, FZOO and MeZO on the held-out packaged tasks,
paired by seed.

    python reports/tuner-v2-smollm2/top_held_out.py [> reports/tuner-v2-smollm2/top-held-out/compare.md]

Reads ``top-held-out/<task>/tuner-v2-top-3e-4-s<seed>/metrics.json`` (stage top-held-out of run.sh; on the
derivative checkpoint ``tuner-v2-top-s<seed>``, the shipped file's runs of stage top-derivative),
``top-held-out/<task>/tuner-v2-top-<lr>-linear-s<seed>`` (stage top-decay-held-out) and the other arms' runs from
the packaged-tasks report (``reports/packaged-tasks-smollm2/runs``, the runs its ``paired.py`` reads).
Checks, with that script's own check, that every arm of a seed starts from the same test split (the same accuracy
and loss before training and the same calibration reference) and that within an arm the runs differ only in seed,
threads and the task's name; prints :func:`finetune.bench.paired_table` with tuner v2 first, then with FZOO first.
"""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from finetune.bench import final_value, paired_bootstrap, paired_table  # noqa: E402
from top_screen import DECAY_LRS, TASKS as SCREEN_TASKS, arms as screen_arms, decay_verdict  # noqa: E402

PACKAGED = HERE.parent / "packaged-tasks-smollm2" / "runs"
# the checks of the packaged-tasks report's paired tables (loaded by path: this folder has a paired.py of its own)
_spec = importlib.util.spec_from_file_location("packaged_paired", PACKAGED.parent / "paired.py")
packaged_paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(packaged_paired)
TOP = HERE / "top-held-out"
SEEDS = (0, 1, 2)
DERIVATIVE = "vader-polarity-derivative"  # word polarity on the packaged-tasks report's derivative checkpoint
TASKS = ("vader-polarity", "city-country", "city-continent", "city-hemisphere", DERIVATIVE)


def decay_lr() -> str | None:
    """The top lr section 20's screen carried to the held-out tasks with a linear decay (read from its runs, not
    typed in), or None when its rule carried none (or its runs have not all finished)."""
    table = {t: screen_arms(t) for t in SCREEN_TASKS}
    if not all(f"+ top {lr} linear" in table[t] for lr in DECAY_LRS for t in SCREEN_TASKS):
        return None
    best, wins = decay_verdict(table)
    return best.split()[2] if wins else None


def folders(task: str, lr: str | None) -> dict[str, Path]:
    """Arm -> the folder of seed ``{}``; word polarity's MeZO and tuner v2 runs sit at the top of ``runs/``. On the
    derivative checkpoint the constant step's arm is the shipped file ``smollm2-135m-v2-top`` itself (stage
    top-derivative). ``lr``: section 20's decayed top lr (:func:`decay_lr`), whose arm joins when not None."""
    top = "" if task == "vader-polarity" else f"{task}/"
    step = TOP / task / ("tuner-v2-top-s{}" if task == DERIVATIVE else "tuner-v2-top-3e-4-s{}")
    out = {"tuner v2": PACKAGED / f"{top}tuner-v2-s{{}}", "tuner v2 + top 3e-4": step}
    if lr is not None:
        out[f"tuner v2 + top {lr} linear"] = TOP / task / f"tuner-v2-top-{lr}-linear-s{{}}"
    return out | {"FZOO": PACKAGED / task / "fzoo-3e-3-s{}", "MeZO": PACKAGED / f"{top}mezo-3e-5-s{{}}"}


def read(task: str, lr: str | None) -> dict[str, dict[int, dict]]:
    return load(folders(task, lr))


def load(patterns: dict[str, Path]) -> dict[str, dict[int, dict]]:
    """Arm -> seed -> metrics of the finished runs, from each arm's folder pattern (``{}``: the seed)."""
    arms = {}
    for arm, pattern in patterns.items():
        paths = {s: Path(str(pattern).format(s)) / "metrics.json" for s in SEEDS}
        arms[arm] = {s: json.loads(p.read_text()) for s, p in paths.items() if p.is_file()}
    return arms


def paired_diff(arm: dict[int, dict], other: dict[int, dict], seeds: list[int], key: str) -> tuple[float, tuple | None]:
    """The mean over ``seeds`` of ``arm`` minus ``other`` in ``eval[key]`` (``after``: the test metric; ``loss_after``:
    the test loss), and its 95% bootstrap interval over the seeds (None below two)."""
    d = [arm[s]["eval"][key] - other[s]["eval"][key] for s in seeds]
    return statistics.fmean(d), paired_bootstrap(d)


def diff_text(mean: float, ci: tuple | None, key: str) -> str:
    """``+0.033 [+0.010, +0.055]``: a :func:`paired_diff`, accuracy to 3 places, a loss to 4."""
    fmt = ".3f" if key == "after" else ".4f"
    return f"{mean:+{fmt}}" + (f" [{ci[0]:+{fmt}}, {ci[1]:+{fmt}}]" if ci else "")


def seed_table(arms: dict[str, dict[int, dict]]) -> str:
    """Every arm's final dev loss, test loss and test accuracy, seed by seed (``–``: not run), as Markdown."""
    lines = ["| arm | " + " | ".join(f"seed {s}: dev loss / test loss / accuracy" for s in SEEDS) + " |",
             "|---|" + "---|" * len(SEEDS)]
    for arm, runs in arms.items():
        lines.append(f"| {arm} | " + " | ".join(
            f"{final_value(runs[s], 'dev_loss'):.4f} / {runs[s]['eval']['loss_after']:.4f} / "
            f"{runs[s]['eval']['after']:.3f}" if s in runs else "–" for s in SEEDS) + " |")
    return "\n".join(lines) + "\n"


def common_seeds_table(task: str, arms: dict[str, dict[int, dict]], first: str) -> dict[str, dict[int, dict]] | None:
    """Print :func:`finetune.bench.paired_table` of the arms with runs, over the seeds all of them finished, ``first``
    first, after the packaged-tasks report's checks (the table only from two seeds); return those arms' runs of those
    seeds, or None (and say so) when ``first`` has none of them."""
    seeds = sorted(set.intersection(*(set(r) for r in arms.values() if r)))
    if not seeds or not arms[first]:
        print(f"No seed finished by every arm ({ {a: sorted(r) for a, r in arms.items()} }).\n")
        return None
    group = {a: {s: r[s] for s in seeds} for a, r in arms.items() if r}
    packaged_paired.check(task, group, seeds)
    if len(seeds) >= 2:
        order = [first] + [a for a in group if a != first]
        print(f"Arms: {', '.join(order)}.\n")
        print(paired_table([group[a] for a in order]))
        print()
    return group


def main() -> None:
    lr = decay_lr()  # read from the screen's runs once
    print("# The top-block step on the held-out packaged tasks, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/top_held_out.py`. Tuner v2 as shipped with and without "
          "`--top-lr 3e-4` (on the derivative checkpoint: the shipped file smollm2-135m-v2-top, the same step), "
          + (f"with `--top-lr {lr} --top-schedule linear` (section 20), " if lr else "")
          + "FZOO 3e-3 and MeZO 3e-5; 1000 passes (FZOO 999), batch 8, fp32. Arms with fewer seeds than the others "
          "get tables of their own, over their seeds.\n")
    for task in TASKS:
        print(f"## {task}\n")
        arms = read(task, lr)
        missing = {a: sorted(set(SEEDS) - set(r)) for a, r in arms.items() if set(SEEDS) - set(r)}
        if missing:
            print(f"Not run (or not finished): {missing}.\n")
        full = {a: r for a, r in arms.items() if set(SEEDS) <= set(r)}
        partial = {a: r for a, r in arms.items() if a not in full and len(r) >= 2}
        groups = [(full, sorted(SEEDS))] if len(full) >= 2 else []
        groups += [({**{b: full[b] for b in full if b in ("tuner v2", "FZOO")}, a: r}, sorted(r))
                   for a, r in partial.items()]
        if not groups:
            print("Fewer than two seeds with two arms: no paired table.\n")
        for group, seeds in groups:
            group = {a: {s: r[s] for s in seeds} for a, r in group.items()}
            packaged_paired.check(task, group, seeds)
            firsts = [a for a in ("tuner v2", "FZOO", "tuner v2 + top 3e-4") if a in group]
            for first in firsts if any(a.endswith("linear") for a in group) else firsts[:2]:
                order = [first] + [a for a in group if a != first]
                print(f"Arms: {', '.join(order)}.\n")
                print(paired_table([group[a] for a in order]))
                print()


if __name__ == "__main__":
    main()
