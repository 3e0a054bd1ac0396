"""Section 29's runs (stage body-tasks of run.sh): all-linear, the exact steps alone at their own lrs, MeZO, FZOO and
fo on the two held-out packaged tasks where no ZO method learned and fo did (syllables, county-state), paired by seed.

    python reports/tuner-v2-smollm2/body_tasks.py [> reports/tuner-v2-smollm2/top-held-out/body-compare.md]

Reads ``top-held-out/<task>/{tuner-v2-top-1e-3-linear-decay,exact-1e-3-1e-3-linear}-s<seed>/metrics.json`` and the
packaged-tasks report's ``runs/<task>/{mezo-3e-5,fzoo-3e-3,fo-1e-5}-s<seed>``, with that report's check (every arm of
a seed starts from the same test split). The reading of run.sh, fixed before the runs, per task over the seeds every
arm has: (1) the body must change if fo is ahead of exact in test accuracy with a 95% interval excluding zero; (2) the
ZO step pays if all-linear is ahead of exact in test accuracy with an interval excluding zero; (3) issue 17's targets
against MeZO and the better of MeZO and FZOO, reported as they come out. Stage body-no-zo adds all-linear with ZO lr 0
on county-state (``tuner-v2-top-1e-3-linear-decay-no-zo-s<seed>``): the ZO step lowers the test loss if ZO lr 0 minus
all-linear is above zero with an interval excluding zero. Stage body-recommended adds v2-top-linear, the recommended
file until 2026-12-08 (``tuner-v2-top-1e-3-linear-s<seed>``), paired with the others over the seeds it finished; no
rule reads it.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
from baselines_decay import accuracy, beyond, mean_of  # noqa: E402
from finetune.bench import forwards_to_target  # noqa: E402
from top_held_out import PACKAGED, TOP, common_seeds_table, diff_text, load, paired_diff, seed_table  # noqa: E402

TASKS = ("syllables", "county-state")
ALL, EXACT = "all-linear", "exact (head 1e-3, top 1e-3, linear)"
NO_ZO = "all-linear, ZO lr 0"  # stage body-no-zo, county-state only
REC = "v2-top-linear (recommended until 2026-12-08)"  # stage body-recommended: no rule reads it


def read(task: str) -> dict[str, dict[int, dict]]:
    no_zo = {NO_ZO: TOP / task / "tuner-v2-top-1e-3-linear-decay-no-zo-s{}"} if task == "county-state" else {}
    return load({ALL: TOP / task / "tuner-v2-top-1e-3-linear-decay-s{}",
                 EXACT: TOP / task / "exact-1e-3-1e-3-linear-s{}",
                 **no_zo,
                 "MeZO": PACKAGED / task / "mezo-3e-5-s{}",
                 "FZOO": PACKAGED / task / "fzoo-3e-3-s{}",
                 "fo (AdamW 1e-5, 100 steps)": PACKAGED / task / "fo-1e-5-s{}"})


def ahead(mean: float, ci: tuple | None) -> bool:
    """Whether a paired difference is positive with a 95% interval excluding zero."""
    return ci is not None and ci[0] > 0


def reading(task: str, arms: dict[str, dict[int, dict]]) -> None:
    """Print run.sh's three readings (and stage body-no-zo's, where it ran) over the seeds every arm has."""
    arms = {a: r for a, r in arms.items() if r}
    seeds = sorted(set.intersection(*(set(r) for r in arms.values())))
    if len(seeds) < 2:
        finished = {a: sorted(r) for a, r in arms.items()}
        print(f"Fewer than two seeds finished by every arm: no reading ({finished}).\n")
        return
    fo = next(a for a in arms if a.startswith("fo"))
    start = statistics.fmean(arms[ALL][s]["eval"]["before"] for s in seeds)
    means = ", ".join(f"{a} {mean_of(r, seeds, accuracy):.3f}" for a, r in arms.items())
    print(f"Seeds {seeds}; mean test accuracy: start {start:.3f}, {means}.\n")
    body = paired_diff(arms[fo], arms[EXACT], seeds, "after")
    pays = paired_diff(arms[ALL], arms[EXACT], seeds, "after")
    print(f"1. fo minus exact, accuracy: {diff_text(*body, 'after')}: the body must change: "
          f"{'yes' if ahead(*body) else 'not shown'}.")
    print(f"2. all-linear minus exact, accuracy: {diff_text(*pays, 'after')} (test loss "
          f"{diff_text(*paired_diff(arms[ALL], arms[EXACT], seeds, 'loss_after'), 'loss_after')}): the ZO step pays: "
          f"{'yes' if ahead(*pays) else 'no'}.")
    if NO_ZO in arms:
        loss = paired_diff(arms[NO_ZO], arms[ALL], seeds, "loss_after")
        print(f"   Stage body-no-zo: ZO lr 0 minus all-linear, test loss {diff_text(*loss, 'loss_after')}, accuracy "
              f"{diff_text(*paired_diff(arms[NO_ZO], arms[ALL], seeds, 'after'), 'after')}: the ZO step lowers the "
              f"test loss: {'yes' if ahead(*loss) else 'not shown (the gap is the exact head step)'}.")
    best = max(("MeZO", "FZOO"), key=lambda a: mean_of(arms[a], seeds, accuracy))
    mezo = arms["MeZO"]
    worse = [s for s in seeds if mezo[s]["eval"]["loss_after"] >= mezo[s]["eval"]["loss_before"]]
    print(f"3. Issue 17's targets (the better baseline by mean accuracy: {best}). "
          + (f"MeZO ends above its starting test loss on seeds {worse}: there any run reaches MeZO's final test loss "
             "at 0 passes, and that target says nothing." if worse else ""))
    for arm in (ALL, EXACT):
        reached = [forwards_to_target(arms[arm][s], mezo[s]["eval"]["loss_after"]) for s in seeds]
        other = "" if best == "MeZO" else (
            f"; accuracy minus {best} {diff_text(*paired_diff(arms[arm], arms[best], seeds, 'after'), 'after')}")
        passes = ", ".join("–" if r is None else str(r) for r in reached)
        print(f"   - {arm}: passes to MeZO's final test loss {passes}"
              f"; accuracy minus MeZO {diff_text(*paired_diff(arms[arm], mezo, seeds, 'after'), 'after')}, "
              f"gain beyond the reference {mean_of(arms[arm], seeds, beyond):+.3f} against MeZO's "
              f"{mean_of(mezo, seeds, beyond):+.3f}{other}.")
    print()


def main() -> None:
    print("# Two held-out tasks where the ZO methods learned nothing: syllables and county-state, paired by seed\n")
    print("Written by `python reports/tuner-v2-smollm2/body_tasks.py`. all-linear (tuner v2 plus `--top-lr 1e-3 "
          "--top-schedule linear --schedule linear`, 500 two-point steps), exact (`--method exact --head-lr 1e-3 "
          "--top-lr 1e-3 --top-schedule linear --schedule linear`, 1000 one-pass steps), MeZO 3e-5 (1000 passes), "
          "FZOO 3e-3 (999 passes) and fo (AdamW 1e-5, 100 steps: 100 forward and 100 backward passes); batch 8, "
          "fp32, 200 test examples. Cells: final dev loss / test loss / test accuracy.\n")
    for task in TASKS:
        print(f"## {task}\n")
        arms = read(task)
        print(seed_table(arms))
        if common_seeds_table(task, arms, EXACT) is not None:
            reading(task, arms)
        rec = load({REC: TOP / task / "tuner-v2-top-1e-3-linear-s{}"})
        if rec[REC]:
            print(f"### {task}: v2-top-linear (stage body-recommended), over the seeds it finished\n")
            others = {a: arms[a] for a in (ALL, EXACT, "MeZO", "FZOO")}
            print(seed_table(rec))
            common_seeds_table(task, rec | others, REC)


if __name__ == "__main__":
    main()
