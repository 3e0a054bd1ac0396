"""Section 23's held-out runs (stage baselines-decay of run.sh): MeZO (3e-5) and FZOO (3e-3) with their lrs decaying
linearly (``--schedule linear``) on the five held-out settings, against their constant runs, and the two tuner
configurations against each baseline at the schedule its dev loss chose, paired by seed.

    python reports/tuner-v2-smollm2/baselines_decay.py [> reports/tuner-v2-smollm2/top-held-out/baselines-decay.md]

Reads ``top-held-out/<setting>/{fzoo-3e-3,mezo-3e-5}-linear-s<seed>/metrics.json`` and the other arms' runs as
``top_held_out.py`` and ``decay_held_out.py`` do, with their checks (the same test split for every arm of a seed;
within an arm, runs that differ only in seed, threads and the task's name). The rule of run.sh, fixed before the
runs: on each setting a baseline's schedule is the one with the lower mean final DEV loss over the seeds both of its
schedules have; no test figure enters the choice. Then the tuners (v2-top-linear, the recommended file, and
all-linear) are compared with FZOO at its chosen schedule: "no worse" on a setting means a mean test accuracy no
lower and a mean test loss no higher over the seeds every arm has. Stage mezo-decay's reading (written before its runs)
follows: issue 17's MeZO targets against MeZO at its chosen schedule, for both tuners: the forward passes each
(setting, seed) needs to reach MeZO's final test loss on the same seed (target: at most 2/3 of MeZO's 1000 on at least
80% of the pairs), and per setting the mean test accuracy and gain beyond the calibration reference against MeZO's.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from decay_held_out import SHORT  # noqa: E402
from decay_held_out import read as read_decay  # noqa: E402
from finetune.bench import final_value, forwards_to_target, paired_table  # noqa: E402
from top_held_out import TASKS, TOP, diff_text, load, packaged_paired, paired_diff, seed_table  # noqa: E402

BASELINES = {"FZOO": "fzoo-3e-3", "MeZO": "mezo-3e-5"}
MEZO_PASSES, TARGET_SHARE = 1000, 0.8  # issue 17: reach MeZO's final test loss in <= 2/3 of its passes on 80% of pairs
TUNERS = SHORT  # section 22's labels -> these


def read(task: str) -> dict[str, dict[int, dict]]:
    """Arm -> seed -> metrics: the tuners and the constant baselines of section 22, and each baseline's linear arm."""
    arms = {TUNERS.get(a, a): r for a, r in read_decay(task).items() if a in (*TUNERS, *BASELINES)}
    return arms | load({f"{b} linear": TOP / task / f"{stem}-linear-s{{}}" for b, stem in BASELINES.items()})


def mean_of(runs: dict[int, dict], seeds: list[int], value) -> float:
    return statistics.fmean(value(runs[s]) for s in seeds)


def dev(run: dict) -> float:
    return final_value(run, "dev_loss")


def accuracy(run: dict) -> float:
    return run["eval"]["after"]


def beyond(run: dict) -> float:
    return run["gain"]["metric_beyond_calibration"]


def choose(arms: dict[str, dict[int, dict]], baseline: str) -> tuple[str | None, str]:
    """The arm (``baseline`` or ``baseline linear``) with the lower mean final dev loss over the seeds both have, and
    the figures in words; None when no seed has both."""
    constant, linear = arms[baseline], arms[f"{baseline} linear"]
    seeds = sorted(set(constant) & set(linear))
    if not seeds:
        return None, "its linear arm has not run"
    const_dev, lin_dev = mean_of(constant, seeds, dev), mean_of(linear, seeds, dev)
    won = lin_dev < const_dev
    return (f"{baseline} linear" if won else baseline,
            f"final dev loss constant {const_dev:.4f}, linear {lin_dev:.4f} (seeds {', '.join(map(str, seeds))}) → "
            + ("linear" if won else "constant"))


def against(tuner: dict[int, dict], base: dict[int, dict], seeds: list[int]) -> tuple[str, bool]:
    """The tuner's paired differences from a baseline (accuracy, test loss; 95% bootstrap intervals) and whether it
    is no worse (mean accuracy no lower, mean test loss no higher)."""
    diffs = {key: paired_diff(tuner, base, seeds, key) for key in ("after", "loss_after")}
    return ("; ".join(diff_text(*d, key) for key, d in diffs.items()),
            diffs["after"][0] >= 0 and diffs["loss_after"][0] <= 0)


def main() -> None:
    print("# The baselines with a decaying lr on the held-out packaged tasks, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/baselines_decay.py`. MeZO 3e-5 (1000 passes) and FZOO 3e-3 "
          "(999 passes) at a constant lr and with `--schedule linear`; each baseline's schedule chosen on its mean "
          "final dev loss; v2-top-linear (tuner v2 plus `--top-lr 1e-3 --top-schedule linear`, the recommended file) "
          "and all-linear (the same with `--schedule linear`) against FZOO at its chosen schedule. Batch 8, fp32.\n")
    rows, tables = [], {}
    for task in TASKS:
        print(f"## {task}\n")
        arms = tables[task] = read(task)
        picks = {b: choose(arms, b) for b in BASELINES}
        for b, (_, words) in picks.items():
            print(f"- {b}: {words}.")
        print()
        print(seed_table(arms))
        seeds = sorted(arms["FZOO linear"])
        group = {a: {s: r[s] for s in seeds} for a, r in arms.items() if set(seeds) <= set(r)}
        if len(seeds) >= 2:  # the arms that have every seed FZOO's linear arm has
            packaged_paired.check(task, group, seeds)
            order = ["FZOO linear"] + [a for a in group if a != "FZOO linear"]
            print(f"Arms: {', '.join(order)}.\n")
            print(paired_table([group[a] for a in order]))
            print()
        fzoo = picks["FZOO"][0]
        tuners = list(TUNERS.values())
        both = sorted(set(arms[fzoo]) & set.intersection(*(set(arms[t]) for t in tuners))) if fzoo else []
        if len(both) >= 2:
            cells = [against(arms[t], arms[fzoo], both) for t in tuners]
            rows.append((task, fzoo, both, cells,
                         {a: mean_of(arms[a], both, accuracy) for a in (fzoo, *tuners)}))
    if not rows:
        print("Fewer than two seeds of FZOO at its chosen schedule on every setting: no summary.")
        return
    print("## Summary: the tuners against FZOO at its chosen schedule\n")
    print("| setting | FZOO's schedule | seeds | FZOO accuracy | " + " | ".join(
        f"{n} accuracy | {n} − FZOO: accuracy; test loss | {n} no worse?" for n in TUNERS.values()) + " |")
    print("|---|---|---|---|" + "---|---|---|" * len(TUNERS))
    for task, fzoo, seeds, cells, acc in rows:
        print(f"| {task} | {'linear' if fzoo.endswith('linear') else 'constant'} | {', '.join(map(str, seeds))} | "
              f"{acc[fzoo]:.3f} | " + " | ".join(f"{acc[t]:.3f} | {c} | {'yes' if ok else 'no'}"
                                                  for t, (c, ok) in zip(TUNERS.values(), cells)) + " |")
    print()
    for i, name in enumerate(TUNERS.values()):
        ok = sum(row[3][i][1] for row in rows)
        print(f"- {name}: no worse than FZOO at its chosen schedule on {ok} of {len(rows)} settings.")
    print()
    mezo_targets(tables)


def mezo_targets(tables: dict[str, dict[str, dict[int, dict]]]) -> None:
    """Issue 17's MeZO targets for both tuners against MeZO at the schedule its dev loss chose, per setting over the
    seeds every arm has: forward passes to MeZO's final test loss on the same seed, and mean accuracy and gain beyond
    the calibration reference (each tuner's against MeZO's); then the share of (setting, seed) pairs within 2/3 of
    MeZO's passes."""
    limit = MEZO_PASSES * 2 / 3
    print("## Summary: issue 17's MeZO targets against MeZO at its chosen schedule\n")
    print("| setting | MeZO's schedule | seeds | MeZO accuracy / beyond calibration | " + " | ".join(
        f"{n}: forwards to MeZO's final test loss | {n} accuracy / beyond calibration" for n in TUNERS.values())
        + " |")
    print("|---|---|---|---|" + "---|---|" * len(TUNERS))
    reached = {n: [] for n in TUNERS.values()}
    for task, arms in tables.items():
        mezo = choose(arms, "MeZO")[0]
        seeds = sorted(set(arms[mezo]) & set.intersection(*(set(arms[n]) for n in TUNERS.values()))) if mezo else []
        if len(seeds) < 2:
            print(f"| {task} | not chosen: fewer than two seeds of both schedules |" + " |" * (2 + 2 * len(TUNERS)))
            continue
        cells = []
        for name in TUNERS.values():
            passes = [forwards_to_target(arms[name][s], arms[mezo][s]["eval"]["loss_after"]) for s in seeds]
            reached[name] += passes
            cells.append(", ".join("–" if f is None else str(f) for f in passes) + " | "
                         f"{mean_of(arms[name], seeds, accuracy):.3f} / "
                         f"{mean_of(arms[name], seeds, beyond):+.3f}")
        schedule = "linear" if mezo.endswith("linear") else "constant"
        print(f"| {task} | {schedule} | {', '.join(map(str, seeds))} | "
              f"{mean_of(arms[mezo], seeds, accuracy):.3f} / "
              f"{mean_of(arms[mezo], seeds, beyond):+.3f} | " + " | ".join(cells) + " |")
    print()
    for name, passes in reached.items():
        if passes:
            within = sum(f is not None and f <= limit for f in passes)
            print(f"- {name}: MeZO's final test loss within 2/3 of its {MEZO_PASSES} passes on {within} of "
                  f"{len(passes)} (setting, seed) pairs ({within / len(passes):.0%}; target {TARGET_SHARE:.0%}): "
                  + ("met" if within >= TARGET_SHARE * len(passes) else "missed") + ".")


if __name__ == "__main__":
    main()
