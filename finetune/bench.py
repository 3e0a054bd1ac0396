"""Compare fine-tuning methods on one model and task at an equal forward-pass budget: JSON, Markdown, PNG.

Every method x learning rate x seed is one run of :func:`finetune.trainer.train` from the same pristine
weights, on one train/dev/test split. A seed fixes the minibatch order (``finetune.data.batches.batches``
with that seed), so under one seed every method sees the same batches in the same order; it also seeds each
ZO method's noise stream. A run gets ``forwards // forward passes per step`` steps (``fo``: one forward and
one backward pass per step) and is evaluated on the test and dev splits at ``eval_points`` points.

The summary (``bench.md``, ``bench.json``):

* per (method, lr): mean ± sample std over seeds of the final train loss, final dev loss, test loss and test
  metric, and wall-clock seconds per forward pass (training steps only);
* per method, at its selected lr (lowest final **dev** loss, or final train loss with ``select="train"``;
  never the test split): the raw gain, the gain beyond the calibration reference
  (:mod:`finetune.calibration`), the paired difference from MeZO with a 95% bootstrap interval over seeds,
  and the forward passes needed to reach MeZO's final test loss (forwards-to-target).
"""
from __future__ import annotations

import fcntl
import json
import math
import random
import shutil
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from finetune.common.atomic import atomic_file
from finetune.common.errors import ZotuneError
from finetune.common.runs import Diverged, RunLock, Snapshot, check_output, late_rise, strict_json
from finetune.data.adapters import load_snapshot_weights, snapshot_weights
from finetune.data.models import model_id
from finetune.trainer import (EXACT, FO, NO_Q_METHODS, FinetuneConfig, compute_precision, prepare, recorded_config,
                              run_inputs, train, work_dir)

REFERENCE = "mezo"  # the method every other one is compared with


@dataclass
class BenchConfig:
    """A grid of runs: every method x learning rate x seed gets ``forwards`` forward passes."""

    base: FinetuneConfig
    methods: list[str] = field(default_factory=lambda: ["mezo", "nspsa", "zo-adam"])
    lrs: dict[str, list[float]] = field(default_factory=dict)  # per method; default: [base.lr]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    forwards: int = 400
    eval_points: int = 10     # evaluations (test and dev) along each run, besides the one before it
    select: str = "dev"       # the lr per method is chosen by final "dev" loss or final "train" loss
    bootstrap: int = 10000    # bootstrap resamples of the seeds
    bootstrap_seed: int = 0

    def validate(self) -> None:
        if self.select not in ("dev", "train"):
            raise ZotuneError(f"--select-on must be dev or train (got {self.select}); the test split never selects")
        if self.eval_points < 0 or self.bootstrap < 1:
            raise ZotuneError("need --eval-points >= 0 and at least one bootstrap resample")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ZotuneError(f"--seeds must be distinct and not empty (got {self.seeds})")
        if EXACT in self.lrs:  # even one value: it would be accepted and change nothing
            raise ZotuneError("--lr-grid exact: method exact takes no ZO lr (its steps run at --head-lr and --top-lr); "
                              "drop exact from --lr-grid")
        if self.select == "dev" and self.base.n_dev < 1:
            raise ZotuneError("--select-on dev needs a dev split: set --n-dev >= 1, or use --select-on train")

    def runs(self) -> list[FinetuneConfig]:
        self.validate()
        out = []
        for method in self.methods:
            for lr in self.lrs.get(method) or [self.base.lr]:
                for seed in self.seeds:
                    cfg = replace(self.base, method=method, lr=lr, seed=seed)
                    if method in (*NO_Q_METHODS, FO, EXACT):  # --q is for the methods that average directions
                        cfg.q = None
                    cfg.validate()
                    cfg.steps = self.forwards // cfg.forwards_per_step
                    if cfg.steps < 1:
                        raise ZotuneError(f"--forwards {self.forwards} is less than one step of {method} "
                                          f"({cfg.forwards_per_step} forward passes)")
                    cfg.eval_every = max(1, cfg.steps // self.eval_points) if self.eval_points else 0
                    out.append(cfg)
        return out


# ---- statistics ---------------------------------------------------------------------------------

def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what is there)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def final_loss(run: dict) -> float:
    """Mean training loss over the last 10% of a run's steps (at least one step)."""
    losses = run["train_loss"]
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def std(values: list[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def quantile(sorted_values: list[float], q: float) -> float:
    """The empirical ``q``-quantile: the smallest value whose empirical CDF is at least ``q``."""
    n = len(sorted_values)
    return sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))]


def paired_bootstrap(diffs: list[float], resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of paired differences (one per seed): the seeds are
    resampled with replacement ``resamples`` times with ``random.Random(seed)``. ``None`` below two seeds."""
    n = len(diffs)
    if n < 2:
        return None
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return quantile(means, tail), quantile(means, 1 - tail)


def forwards_to_target(run: dict, target: float) -> int | None:
    """The forward passes after which ``run``'s logged test loss first reaches ``target`` (``None``: never)."""
    for point in run.get("curve", []):
        if point["test_loss"] is not None and point["test_loss"] <= target:
            return point["forwards"]
    return None


def final_value(run: dict, key: str) -> float | None:
    """A run's value of ``key`` (``test_loss``, ``dev_loss``, ``test``, ...) at its last evaluation point."""
    curve = run.get("curve") or [{}]
    return curve[-1].get(key)


def late_rises(rows: list[dict]) -> list[str]:
    """The summary rows' runs whose training loss rose late, one ``mezo lr 3e-05, seeds 1, 2`` per (method, lr)."""
    return [f"{r['method']}{lr_text(r['method'], r['lr'], ' lr ')}, "
            f"seed{'s' if len(r['late_rise_seeds']) > 1 else ''} {', '.join(map(str, r['late_rise_seeds']))}"
            for r in sorted(rows, key=lambda r: (r["method"], r["lr"])) if r.get("late_rise_seeds")]


def summarise(runs: list[dict], select: str = "train", calibration: dict | None = None) -> list[dict]:
    """One row per (method, lr): means and sample standard deviations over seeds; ``best`` marks each method's
    selected learning rate, the lowest final dev loss (``select="dev"``) or final training loss
    (``"train"``; the test split plays no part in the choice). ``late_rise_seeds``: the seeds whose training loss
    rose late (:func:`~finetune.common.runs.late_rise`), when there are any."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["lr"]), []).append(r)
    rows = []
    for (method, lr), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        failed = [r.get("seed", 0) for r in rs if r.get("diverged")]
        if failed:  # no statistics over the seeds that survived: this lr is out of the selection
            rows.append({"method": method, "lr": lr, "seeds": len(rs), "steps": rs[0]["steps"],
                         "diverged_seeds": failed, "diverged": next(r["diverged"] for r in rs if r.get("diverged"))})
            continue
        losses = [final_loss(r) for r in rs]
        after = [r["eval"]["after"] for r in rs]
        row = {"method": method, "lr": lr, "seeds": len(rs), "steps": rs[0]["steps"],
               "forwards": rs[0]["forwards"], "backwards": rs[0].get("backwards", 0),
               "final_loss": statistics.fmean(losses), "final_loss_std": std(losses),
               "eval_before": rs[0]["eval"]["before"], "eval_after": statistics.fmean(after),
               "eval_after_std": std(after)}
        for key, name in (("dev_loss", "dev_loss"), ("test_loss", "test_loss")):
            values = [final_value(r, key) for r in rs]
            if all(v is not None for v in values) and values:
                row[name], row[name + "_std"] = statistics.fmean(values), std(values)
        if all(r.get("seconds") is not None and r.get("forwards") for r in rs):
            row["seconds_per_forward"] = statistics.fmean(r["seconds"] / r["forwards"] for r in rs)
        rose = [r.get("seed", 0) for r in rs if late_rise(r["train_loss"]) is not None]
        if rose:  # finetune's late-rise note, per seed (docs/reliability.md)
            row["late_rise_seeds"] = rose
        row["gain"] = row["eval_after"] - row["eval_before"]
        if calibration is not None:
            cal = calibration["test"]["after"]
            row["gain_beyond_calibration"] = row["eval_after"] - cal["accuracy"]
            if "test_loss" in row:
                row["loss_gain_beyond_calibration"] = cal["loss"] - row["test_loss"]
        rows.append(row)
    for method in {r["method"] for r in rows}:
        candidates = [r for r in rows if r["method"] == method and not r.get("diverged_seeds")]
        if not candidates:
            continue  # every lr diverged: nothing to select (the report says so)
        ok = {r["lr"] for r in candidates}
        lr, seeds = _select(method, [g for (m, x), g in groups.items() if m == method and x in ok], select)
        best = next(r for r in candidates if r["lr"] == lr)
        best["best"] = True
        best["selected_on"] = f"{select} loss"
        if any(r["seeds"] > len(seeds) for r in candidates):  # a merged bench: the grid ran on fewer seeds
            best["selected_on"] += f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    return rows


def _select(method: str, groups: list[list[dict]], select: str) -> tuple[float, list[int]]:
    """The lr with the lowest mean final dev (or training) loss over the seeds that every lr of ``method``
    ran, and those seeds: a merged bench (:func:`merge`) whose grid ran on seed 0 and whose selected lr ran
    more seeds still compares the lrs on the same seeds."""
    seeds = sorted(set.intersection(*({r.get("seed", 0) for r in g} for g in groups)))
    if not seeds:
        raise ZotuneError(f"cannot select {method}'s lr: its learning rates share no seed")

    def score(g: list[dict]) -> float:
        values = [final_loss(r) if select == "train" else final_value(r, "dev_loss") for r in g
                  if r.get("seed", 0) in seeds]
        if any(v is None for v in values):
            raise ZotuneError(f"cannot select on {select}: a {method} run has no final {select} loss")
        return statistics.fmean(values)

    best = min(groups, key=score)
    return best[0]["lr"], seeds


def compare(runs: list[dict], rows: list[dict], resamples: int = 10000, seed: int = 0) -> list[dict]:
    """Each method at its selected lr against MeZO at its selected lr, paired by seed: the mean difference of
    the test metric and test loss with 95% bootstrap intervals, and forwards-to-target (MeZO's final test loss
    at that seed). Empty without a ``mezo`` row."""
    selected = {r["method"]: r for r in rows if r.get("best")}
    if REFERENCE not in selected:
        return []
    by = {(r["method"], r["lr"], r["seed"]): r for r in runs}
    ref = {s: r for (m, lr, s), r in by.items() if m == REFERENCE and lr == selected[REFERENCE]["lr"]}
    out = []
    for method, row in sorted(selected.items()):
        mine = {s: r for (m, lr, s), r in by.items() if m == method and lr == row["lr"]}
        seeds = sorted(set(mine) & set(ref))
        d_metric = [mine[s]["eval"]["after"] - ref[s]["eval"]["after"] for s in seeds]
        entry = {"method": method, "lr": row["lr"], "seeds": seeds,
                 "metric_diff": statistics.fmean(d_metric) if seeds else None,
                 "metric_diff_ci": paired_bootstrap(d_metric, resamples, seed)}
        losses = [(final_value(mine[s], "test_loss"), final_value(ref[s], "test_loss")) for s in seeds]
        if seeds and all(a is not None and b is not None for a, b in losses):
            d_loss = [a - b for a, b in losses]
            entry.update(loss_diff=statistics.fmean(d_loss), loss_diff_ci=paired_bootstrap(d_loss, resamples, seed))
            reached = [forwards_to_target(mine[s], b) for s, (_, b) in zip(seeds, losses)]
            hit = [f for f in reached if f is not None]
            entry.update(forwards_to_target=statistics.fmean(hit) if hit else None, reached=len(hit),
                         forwards_to_target_per_seed=reached)
        out.append(entry)
    return out


# ---- report ---------------------------------------------------------------------------------------

def _pm(row: dict, key: str, fmt: str) -> str:
    if row.get(key) is None:
        return "n/a"
    return f"{row[key]:{fmt}} ± {row.get(key + '_std', 0.0):{fmt}}"


def _signed(x: float | None, ci, fmt: str) -> str:
    if x is None:
        return "n/a"
    text = f"{x:+{fmt}}"
    return text + (f" [{ci[0]:+{fmt}}, {ci[1]:+{fmt}}]" if ci else " (one seed: no interval)")


def markdown(rows: list[dict], metric: str, title: str, comparison: list[dict] | None = None,
             calibration: dict | None = None) -> str:
    lines = [f"# {title.replace(chr(10), ': ')}", "",
             f"| method | lr | seeds | steps | forwards | backwards | final train loss | final dev loss | test loss | "
             f"{metric} before | {metric} after | s / forward |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["lr"])):
        if r.get("diverged_seeds"):
            seeds = ", ".join(map(str, r["diverged_seeds"]))
            lines.append(f"| {r['method']} | {r['lr']:g} | {r['seeds']} | {r['steps']} | diverged (seed {seeds} of "
                         f"{r['seeds']}): not selectable | | | | | | | |")
            continue
        mark = f" **(selected on {r.get('selected_on', 'train loss')})**" if r.get("best") else ""
        spf = f"{r['seconds_per_forward']:.3f}" if r.get("seconds_per_forward") is not None else "n/a"
        lines.append(f"| {r['method']}{mark} | {r['lr']:g} | {r['seeds']} | {r['steps']} | {r['forwards']} | "
                     f"{r.get('backwards', 0)} | {_pm(r, 'final_loss', '.4f')} | {_pm(r, 'dev_loss', '.4f')} | "
                     f"{_pm(r, 'test_loss', '.4f')} | {r['eval_before']:.3f} | {_pm(r, 'eval_after', '.3f')} | {spf} |")
    lines += ["", "Mean ± sample std over seeds. Final train loss: mean over the last 10% of steps. Dev and test "
              "loss: after the run. s / forward: wall-clock seconds of the training steps (evaluation excluded) "
              "per forward pass (for fo a pass includes its backward). The lr of each method is selected on "
              "the loss named, never on the test split."]
    if calibration is not None:
        t = calibration["test"]
        lines += ["", f"**Calibration reference** (per-{calibration['mode']} log-prior offsets fitted on "
                  f"{calibration['n_train']} training examples, frozen model): test loss "
                  f"{t['before']['loss']:.4f} -> {t['after']['loss']:.4f}, {metric} "
                  f"{t['before']['accuracy']:.3f} -> {t['after']['accuracy']:.3f}."]
    if rose := late_rises(rows):
        lines += ["", f"**The training loss rose late** ({'; '.join(rose)}): it fell, then climbed back well beyond "
                  "its noise in the last part of the run (finetune's note; docs/reliability.md). Such an lr may be "
                  "too high for a run this long: a decaying schedule or a lower lr usually removes the rise."]
    gone = sorted({r["method"] for r in rows} - {r["method"] for r in rows if r.get("best")})
    if gone:
        lines += ["", f"**Every lr diverged** for {', '.join(gone)}: no lr is selected and no comparison is made. "
                  "A diverged run is one the divergence guard stopped (weights or loss not finite, the weights' "
                  "norm 100x its start, or the training loss 100x its start); it is recorded, and its lr is never "
                  "selected."]
    best = sorted((r for r in rows if r.get("best")), key=lambda r: r["method"])
    cmp = {c["method"]: c for c in comparison or []}
    if best:
        lines += ["", f"| method (selected lr) | {metric} after | raw gain | gain beyond calibration | "
                  f"test loss gain beyond calibration | Δ{metric} vs {REFERENCE} [95% CI] | "
                  f"Δtest loss vs {REFERENCE} [95% CI] | forwards to {REFERENCE}'s final test loss |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in best:
            c = cmp.get(r["method"], {})
            beyond = f"{r['gain_beyond_calibration']:+.3f}" if "gain_beyond_calibration" in r else "n/a"
            loss_beyond = (f"{r['loss_gain_beyond_calibration']:+.4f}" if "loss_gain_beyond_calibration" in r
                           else "n/a")
            if "reached" not in c:
                ftt = "n/a"
            elif c["reached"] == 0:
                ftt = f"not reached (0/{len(c['seeds'])})"
            else:
                ftt = f"{c['forwards_to_target']:.0f} ({c['reached']}/{len(c['seeds'])} seeds)"
            lines.append(f"| {r['method']} ({r['lr']:g}) | {_pm(r, 'eval_after', '.3f')} | {r['gain']:+.3f} | "
                         f"{beyond} | {loss_beyond} | {_signed(c.get('metric_diff'), c.get('metric_diff_ci'), '.3f')} | "
                         f"{_signed(c.get('loss_diff'), c.get('loss_diff_ci'), '.4f')} | {ftt} |")
        lines += ["", f"Gains are on the test split: raw = {metric} after - before; beyond calibration = {metric} "
                  "(or test loss) after fine-tuning minus the calibration reference's. Differences from "
                  f"{REFERENCE} are paired by seed (same split, same batch order), with a 95% percentile "
                  "bootstrap interval over seeds. Forwards to target: the first logged evaluation at which the "
                  f"test loss is at or below {REFERENCE}'s final test loss on the same seed, averaged over the "
                  "seeds that reach it."]
        few = min((len(c["seeds"]) for c in comparison or []), default=0)
        if 0 < few < 5:
            lines += ["", f"**Few seeds ({few}).** The bootstrap resamples only {few} paired differences"
                      + (": with two seeds the interval is just the range of the two differences" if few == 2 else "")
                      + ". Read the intervals as the spread of these seeds, not as a test; use 5 or more seeds "
                      "for a claim."]
    return "\n".join(lines) + "\n"


def calibrated_metric(metrics: dict) -> float | None:
    """The calibration reference's test accuracy from a run's ``metrics.json`` (None without one)."""
    return ((metrics.get("calibration") or {}).get("test") or {}).get("after", {}).get("accuracy")


def _read_finished(folders: list[Path]) -> list[tuple[Path, dict]]:
    """The ``metrics.json`` of finished ``finetune`` runs, all of one task and test-set size (else a one-line
    error)."""
    runs = []
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise ZotuneError(f"no metrics.json in {folder}; give the --out folder of a finished finetune run")
        try:
            runs.append((Path(folder), json.loads(path.read_text())))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ZotuneError(f"{path} is not a metrics file ({err}); give the --out folder of a finished run") from None
    tasks = sorted({(m["task"], m["eval"]["n"]) for _, m in runs})
    if len(tasks) > 1 and (len({n for _, n in tasks}) > 1 or not _names_of_one_split(runs)):
        raise ZotuneError("the runs are on different tasks or test sets (" + "; ".join(
            f"{t}, {n} test examples" for t, n in tasks) + "); compare runs of one task")
    tests: dict[int, tuple[Path, str]] = {}  # seed -> the first run's test-split hash (runs since 2026-12-06)
    for folder, m in runs:
        s, sha = m["config"]["seed"], m["eval"].get("sha256")
        if sha is not None and tests.setdefault(s, (folder, sha))[1] != sha:
            raise ZotuneError(f"{tests[s][0]} and {folder} ran seed {s} on different test examples (their task data or "
                              "split sizes differ); compare runs of one task and split")
    return runs


def _names_of_one_split(runs: list[tuple[Path, dict]]) -> bool:
    """Whether runs under different task names (a ``packaged:`` spec and a file of its rows, say) can be shown to
    hold the same data: every run has its test split's hash and every name ran the same seeds (that the runs of a
    seed share one hash, :func:`_read_finished` checks next)."""
    if any(m["eval"].get("sha256") is None for _, m in runs):
        return False
    seeds: dict[str, set[int]] = {}
    for _, m in runs:
        seeds.setdefault(m["task"], set()).add(m["config"]["seed"])
    return len({frozenset(s) for s in seeds.values()}) == 1


def compare_runs(arms: list[list[Path]], resamples: int = 10000, seed: int = 0) -> str:
    """``cli.py compare``: finished ``finetune`` runs of one task (their ``metrics.json``, each read once).

    A Markdown table with one row per folder: method, forward passes, test loss and metric before and after, the
    calibration reference's metric, and the gain, raw and beyond that reference. With more than one arm, also
    the arms paired by seed (:func:`paired_table`): each arm is one setting run over several seeds (runs that
    differ only in ``--seed``, threads or device), and every arm has one run per seed, the same seeds. A folder
    without metrics, runs of different tasks or test sets, or arms that cannot be paired are a one-line error,
    raised before any table is made."""
    read = _read_finished([f for arm in arms for f in arm])
    paired = paired_table(_pair_by_seed(arms, read), resamples, seed) if len(arms) > 1 else None
    metric = read[0][1]["eval"]["metric"]
    lines = [f"| run | method | forwards | test loss | {metric} | calibration reference | gain | "
             "gain beyond calibration |", "|---|---|---|---|---|---|---|---|"]
    for folder, m in read:
        ev, gain = m["eval"], m.get("gain") or {}
        cal = calibrated_metric(m)
        beyond = gain.get("metric_beyond_calibration")
        lines.append(f"| {folder.name} | {m['method']} | {m['forwards']} | {ev['loss_before']:.4f} -> "
                     f"{ev['loss_after']:.4f} | {ev['before']:.3f} -> {ev['after']:.3f} | "
                     f"{'–' if cal is None else f'{cal:.3f}'} | {ev['after'] - ev['before']:+.3f} | "
                     f"{'–' if beyond is None else f'{beyond:+.3f}'} |")
    return "\n".join(lines) + ("" if paired is None else "\n\n" + paired)


# A run's config keys that may differ between the seeds of one arm of `compare_runs` (the rest must agree).
ARM_FREE_KEYS = ("seed", "threads", "device", "device_map")


def lr_text(method: str, lr: float, sep: str = " ") -> str:
    """`` 0.001`` (``sep`` between), or nothing for method exact, which takes no ZO lr."""
    return "" if method == EXACT else f"{sep}{lr:g}"


def _arm_label(m: dict) -> str:
    schedule = m["config"].get("schedule", "constant")
    lr = lr_text(m["method"], m["config"]["lr"])
    label = (f"{m['method']}{lr}" + ("" if schedule == "constant" else f" {schedule}")
             + (f", head {m['head_lr']:g}" if m.get("head_lr") else ""))
    top = m["config"].get("top_lr")
    return label + (f", top {top:g}" + (f" {m['config']['top_schedule']}" if m["config"].get("top_schedule") else "")
                    if top else "")


def _pair_by_seed(arms: list[list[Path]], read: list[tuple[Path, dict]]) -> list[dict[int, dict]]:
    """``read`` (the folders of ``arms`` in order, with their metrics) as one seed -> metrics map per arm, after
    checking that each arm is one setting with one run per seed and that every arm has the same seeds."""
    by_folder = iter(read)
    table: list[dict[int, tuple[Path, dict]]] = []
    for arm in arms:
        runs: dict[int, tuple[Path, dict]] = {}
        for _ in arm:
            folder, m = next(by_folder)
            s = m["config"]["seed"]
            if s in runs:
                raise ZotuneError(f"{runs[s][0]} and {folder} both ran seed {s}; give one run per seed in an arm")
            first_folder, first = next(iter(runs.values()), (folder, m))
            ours, theirs = recorded_config(first["config"]), recorded_config(m["config"])
            for key in sorted(set(ours) | set(theirs)):
                a, b = ours.get(key), theirs.get(key)
                if key not in ARM_FREE_KEYS and a != b:
                    raise ZotuneError(f"{first_folder} and {folder} differ in {key} ({a} against {b}): an arm is one "
                                      "setting over seeds; pass a run with other settings after another --vs")
            runs[s] = (folder, m)
        table.append(runs)
    seeds = sorted(table[0])
    for arm, runs in zip(arms[1:], table[1:]):
        if sorted(runs) != seeds:
            raise ZotuneError(f"the arm of {arm[0]} ran seeds {sorted(runs)}, the first arm {seeds}; every arm needs "
                              "one run for each of the same seeds")
    return [{s: m for s, (_, m) in runs.items()} for runs in table]


def paired_table(table: list[dict[int, dict]], resamples: int = 10000, seed: int = 0) -> str:
    """Arms of runs of one task paired by seed (per arm, seed -> ``metrics.json``; every arm the same seeds): a
    Markdown table, one row per arm: the test metric and test loss (mean ± sample std over seeds), the gain beyond
    the calibration reference, and against the first arm the mean paired difference of the metric and of the test
    loss with a 95% percentile bootstrap interval over seeds (:func:`paired_bootstrap`), and the forward passes
    each run needs to reach its first-arm partner's final test loss (at the run's logged evaluation points;
    ``–``: never)."""
    seeds = sorted(table[0])
    metric = table[0][seeds[0]]["eval"]["metric"]
    ref = table[0]
    lines = [f"Paired by seed (seeds {', '.join(map(str, seeds))}); differences from the first arm, with 95% "
             "bootstrap intervals over the seeds.", "",
             f"| arm | {metric} | test loss | {metric} beyond calibration | Δ {metric} | Δ test loss | "
             f"forwards to {_arm_label(ref[seeds[0]])}'s final test loss |", "|---|---|---|---|---|---|---|"]
    for i, runs in enumerate(table):
        ms = [runs[s] for s in seeds]
        acc = [m["eval"]["after"] for m in ms]
        loss = [m["eval"]["loss_after"] for m in ms]
        beyond = [(m.get("gain") or {}).get("metric_beyond_calibration") for m in ms]
        cells = [_arm_label(ms[0]), f"{statistics.fmean(acc):.3f} ± {std(acc):.3f}",
                 f"{statistics.fmean(loss):.4f} ± {std(loss):.4f}",
                 "–" if None in beyond else f"{statistics.fmean(beyond):+.3f}"]
        if i == 0:
            cells += ["", "", ""]
        else:
            d_acc = [a - ref[s]["eval"]["after"] for s, a in zip(seeds, acc)]
            d_loss = [a - ref[s]["eval"]["loss_after"] for s, a in zip(seeds, loss)]
            reached = [forwards_to_target(m, ref[s]["eval"]["loss_after"]) for s, m in zip(seeds, ms)]
            cells += [_signed(statistics.fmean(d_acc), paired_bootstrap(d_acc, resamples, seed), ".3f"),
                      _signed(statistics.fmean(d_loss), paired_bootstrap(d_loss, resamples, seed), ".4f"),
                      ", ".join("–" if f is None else str(f) for f in reached)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _band(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    n = min(len(c) for c in curves)
    mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
    spread = [std([c[i] for c in curves]) for i in range(n)]
    return mean, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)]


def plot(runs: list[dict], rows: list[dict], path: Path, title: str, calibration: dict | None = None) -> None:
    """Training loss (moving average) and, where the runs logged it, test loss against forward passes, for
    each method's selected lr: the mean over seeds with a ± one std band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = sorted((r for r in rows if r.get("best")), key=lambda r: r["method"])
    groups = {row["method"]: [r for r in runs if r["method"] == row["method"] and r["lr"] == row["lr"]] for row in best}
    with_curves = all(len(r.get("curve") or []) > 1 for rs in groups.values() for r in rs)
    fig, axes = plt.subplots(1, 2 if with_curves else 1, figsize=(12 if with_curves else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for row in best:
        rs = groups[row["method"]]
        window = max(1, len(rs[0]["train_loss"]) // 20)
        mean, lo, hi = _band([smooth(r["train_loss"], window) for r in rs])
        per_step = rs[0]["forwards"] / max(1, len(rs[0]["train_loss"]))
        x = [(i + 1) * per_step for i in range(len(mean))]
        line, = ax.plot(x, mean, label=f"{row['method']} (lr {row['lr']:g}, {len(rs)} seeds)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("forward passes")
    ax.set_ylabel("training loss (moving average)")
    ax.legend(fontsize=8)
    if with_curves:
        ax = axes[0][1]
        for row in best:
            rs = groups[row["method"]]
            mean, lo, hi = _band([[p["test_loss"] for p in r["curve"]] for r in rs])
            x = [p["forwards"] for p in rs[0]["curve"]][: len(mean)]
            line, = ax.plot(x, mean, marker=".", label=row["method"])
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        if calibration is not None:
            ax.axhline(calibration["test"]["after"]["loss"], color="grey", linestyle="--",
                       label="calibration reference")
        ax.set_xlabel("forward passes")
        ax.set_ylabel("test loss")
        ax.legend(fontsize=8)
    fig.suptitle(title + "\nmean over seeds, band: ± one std", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(folder: Path, head: dict, runs: list[dict], select: str, calibration: dict, resamples: int,
                 seed: int) -> list[dict]:
    """Summarise and compare ``runs`` and write ``bench.json``, ``bench.md`` and ``bench.png`` into ``folder``
    (of :func:`bench` and :func:`merge`). ``head``: the model, task, metric, forwards and split sizes, and what
    else bench.json records of where the runs came from. The lr is selected on ``select`` loss, or on training
    loss where the split has no dev examples. Returns the summary rows."""
    select = select if head["split"]["dev"] else "train"
    rows = summarise(runs, select, calibration)
    comparison = compare(runs, rows, resamples, seed)
    title = f"{head['model']} on {head['task']}\n{head['forwards']} forward passes per run"
    report = {**head, "selected_on": f"{select} loss", "calibration": calibration, "summary": rows,
              "comparison": comparison, "runs": runs}
    (folder / "bench.json").write_text(strict_json(report, indent=1))
    (folder / "bench.md").write_text(markdown(rows, head["metric"], title, comparison, calibration))
    plot(runs, rows, folder / "bench.png", title, calibration)
    return rows


# ---- the command ----------------------------------------------------------------------------------

# ------------------------------------------------ run logs shared by the benchmarks' grids (benchmarks/)
def mean_test_loss(scorer, model, examples) -> float:
    """Mean training-objective loss over ``examples`` (chunks of 25): far less noisy than accuracy."""
    with torch.inference_mode():
        chunks = [examples[i:i + 25] for i in range(0, len(examples), 25)]
        return sum(float(scorer.loss(model, c)) * len(c) for c in chunks) / len(examples)


def read_runs(log: Path) -> list[dict]:
    """The runs recorded in ``log`` (a JSON list), or none."""
    return json.loads(log.read_text()) if log.exists() else []


def append_run(log: Path, run: dict) -> None:
    """Add one run to ``log`` under a file lock, so that processes sharing an output folder (each with its
    own seeds) never lose each other's runs."""
    with open(log.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = read_runs(log) + [run]
        with atomic_file(log) as tmp:
            tmp.write_text(json.dumps(runs))


def _run_record(cfg: FinetuneConfig, result) -> dict:
    return _plain({"method": cfg.method, "lr": cfg.lr, "seed": cfg.seed, "steps": cfg.steps,
                        "optimizer": cfg.optimizer_name, "head_lr": result.head_lr, "forwards": result.forwards,
                        "backwards": result.backwards,
                        "train_loss": result.train_loss,
                        "eval": {"before": result.eval_before, "after": result.eval_after,
                                 "loss_before": result.loss_before, "loss_after": result.loss_after},
                        "curve": result.curve, "seconds": result.seconds,
                        **({"head_race": result.head_race} if result.head_race else {})})


def _plain(value):
    """``value`` as strict JSON would have it: non-finite floats as ``None``, tuples as lists."""
    return json.loads(strict_json(value))


def bench_spec(cfg: BenchConfig) -> dict:
    """The options of a bench as its report records them (``config`` in bench.json)."""
    return _plain({**asdict(cfg), "base": asdict(cfg.base)})


def _write_json(path: Path, value) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(strict_json(value, indent=1))


def bench(cfg: BenchConfig, out: Path, progress: bool = True, resume: bool = False,
          snapshot_every: int = 100, tuner=None) -> list[dict]:
    """Run the grid and write ``out/bench.json``, ``out/bench.md`` and ``out/bench.png``.

    The bench works in :func:`finetune.trainer.work_dir` (``.<out>.partial``): every finished run is saved
    there, and the run in progress leaves a snapshot every ``snapshot_every`` steps. After a kill the same
    call with ``resume=True`` skips the finished runs and continues the interrupted one; the folder is renamed
    to ``out`` when everything is done. ``tuner``: the loaded artifact of method ``tuner``, else read from the
    config."""
    runs_cfg = cfg.runs()
    base = cfg.base
    out = check_output(Path(out))
    with RunLock(out):  # a second bench to the same folder is refused while this one runs
        check_output(out)  # again, now that no other bench can write it
        work = work_dir(out)
        spec = bench_spec(cfg)
        spec_path = work / "bench-config.json"
        if resume:
            if not spec_path.exists():
                raise ZotuneError(f"nothing to resume: no interrupted bench in {work}; run without --resume")
            if json.loads(spec_path.read_text()) != spec:
                raise ZotuneError(f"cannot resume: the interrupted bench in {work} had other options; rerun it with "
                                  "the same options or delete that folder")
        elif work.exists():
            raise ZotuneError(f"an interrupted bench to {out} is in {work}; add --resume to continue it, or delete "
                              "that folder")
        (work / "runs").mkdir(parents=True, exist_ok=True)
        if not resume:
            _write_json(spec_path, spec)
        try:
            task, model, _, scorer = prepare(base)
            pristine = {k: v.detach().clone() for k, v in snapshot_weights(model).items()}  # adapter-sized with --peft
            inputs = run_inputs(base, task, model)  # fingerprints: a resumed run must see the same data and weights
            cal_path = work / "calibration.json"  # of the frozen model, once for the whole grid (one split)
            if not cal_path.exists():
                from finetune.calibration import calibration_reference

                with compute_precision(base, model):  # scored as the runs score (--autocast), as finetune does
                    reference = calibration_reference(model, scorer, task, base.batch_size)
                _write_json(cal_path, {"calibration": reference})
            calibration = json.loads(cal_path.read_text())["calibration"]
            runs = []
            columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, disable=not progress) as bar:
                job = bar.add_task("bench", total=len(runs_cfg))
                for i, run_cfg in enumerate(runs_cfg):
                    path = work / "runs" / f"{i:04d}.json"
                    if path.exists():
                        runs.append(json.loads(path.read_text()))
                        bar.advance(job)
                        continue
                    bar.update(job, description=f"{run_cfg.method}{lr_text(run_cfg.method, run_cfg.lr, ' lr=')} "
                                                        f"seed={run_cfg.seed}")
                    load_snapshot_weights(model, pristine)
                    snapshot = Snapshot(work / "snapshot.pt", snapshot_every,
                                        restart_hint=f"delete {work} to start the bench over")
                    try:
                        result = train(run_cfg, model, scorer, task, progress=False, snapshot=snapshot, inputs=inputs,
                                       tuner=tuner)
                        run = _run_record(run_cfg, result)
                    except Diverged as e:  # a grid often holds an lr too large: record it, go on with the grid
                        run = _plain({"method": run_cfg.method, "lr": run_cfg.lr, "seed": run_cfg.seed,
                                      "steps": run_cfg.steps, "optimizer": run_cfg.optimizer_name,
                                      "diverged": str(e).split("; ")[0]})
                    # first: a kill in between reruns this run, never restores it into the next
                    snapshot.path.unlink(missing_ok=True)
                    _write_json(path, run)
                    runs.append(run)
                    bar.advance(job)
            load_snapshot_weights(model, pristine)
            head = {"model": model_id(base.model), "task": task.name, "metric": task.metric, "forwards": cfg.forwards,
                    "split": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)}, "config": spec}
            rows = write_report(work, head, runs, cfg.select, calibration, cfg.bootstrap, cfg.bootstrap_seed)
            shutil.rmtree(work / "runs")
            spec_path.unlink()
            cal_path.unlink()
            if out.exists():
                out.rmdir()  # an empty folder made beforehand
            work.rename(out)
            return rows
        except BaseException:
            if not any((work / "runs").glob("*.json")) and not (work / "snapshot.pt").exists():
                shutil.rmtree(work, ignore_errors=True)
            raise


# ---- merging benches -----------------------------------------------------------------------------

_PER_RUN = ("method", "lr", "seed", "q")  # what may differ between the runs of benches that merge


def _merge_key(report: dict) -> dict:
    """What benches must share to merge: model, task, split, budget, evaluation and every run option other
    than the method, lr and seed (which the merged table is about). ``--tuner`` counts only for benches that
    ran method ``tuner``: a MeZO bench merges with a tuner bench; two benches of different tuners do not, nor two
    benches of one tuner of which one set ``--head-lr`` (a tuner may carry its own head step)."""
    configs = [report["config"]] if "config" in report else report["configs"]  # a bench, or a merged one
    spec = configs[0]
    base = {k: v for k, v in recorded_config(spec["base"]).items() if k not in (*_PER_RUN, "tuner")}
    # an unset --head-lr is off for every method but tuner, whose runs take the tuner's own head step: in the key it
    # is 0 (benches written before it could be unset recorded 0), and a tuner run's head step goes with its tuner
    tuners = sorted({str(c["base"].get("tuner")) + ("" if c["base"].get("head_lr") is None else
                                                     f" with --head-lr {c['base']['head_lr']:g}")
                     + ("" if c["base"].get("top_lr") is None else f" with --top-lr {c['base']['top_lr']:g}")
                     + ("" if c["base"].get("top_schedule") is None else
                        f" with --top-schedule {c['base']['top_schedule']}")
                     for c in configs if "tuner" in c["methods"]})
    if base.get("head_lr") is None:
        base["head_lr"] = 0.0
    return {"model": report["model"], "task": report["task"], "split": report["split"],
            "calibration": report["calibration"], "base": base, "tuner": tuners,
            **{k: spec[k] for k in ("forwards", "eval_points", "select", "bootstrap", "bootstrap_seed")}}


def merge(folders: list[Path], out: Path) -> list[dict]:
    """Join finished benches of one model, task and budget into one report at ``out``: typically an lr grid
    screened on seed 0 and each method's selected lr run on more seeds. Each method's lr is then chosen on
    the seeds all its lrs share (:func:`_select`), and the comparison with MeZO pairs every seed the selected
    lrs share. Runs present in two benches must agree exactly. Writes bench.json, bench.md and bench.png."""
    if len(folders) < 2:
        raise ZotuneError("bench-merge needs at least two finished bench folders")
    reports = []
    for folder in folders:
        path = Path(folder) / "bench.json"
        if not path.is_file():
            raise ZotuneError(f"{folder} holds no finished bench (no bench.json); finish it with bench --resume first")
        reports.append(json.loads(path.read_text()))
    keys = []
    for folder, report in zip(folders, reports):
        try:
            keys.append(_merge_key(report))
        except (KeyError, IndexError, TypeError):
            raise ZotuneError(f"{folder}/bench.json is not a bench report (written by bench or bench-merge)") from None
    key = keys[0]
    for folder, other in zip(folders[1:], keys[1:]):
        diff = [k for k in key if k not in ("base", "tuner") and key[k] != other[k]]
        diff += [f"--{k.replace('_', '-')}" for k in sorted(set(key["base"]) | set(other["base"]))
                 if key["base"].get(k) != other["base"].get(k)]
        if diff:
            raise ZotuneError(f"cannot merge {folders[0]} and {folder}: they differ in {', '.join(diff)}; only "
                              "methods, learning rates and seeds may differ")
    tuners = {t: folder for folder, k in zip(folders, keys) for t in k["tuner"]}
    if len(tuners) > 1:
        (a, fa), (b, fb) = list(tuners.items())[:2]
        raise ZotuneError(f"cannot merge {fa} and {fb}: their method 'tuner' runs used different tuners ({a}, {b}); "
                          "compare each tuner in its own merged report")
    runs: dict[tuple, dict] = {}
    same = ("train_loss", "eval", "curve", "forwards", "backwards", "steps", "diverged")
    for folder, report in zip(folders, reports):
        for run in report["runs"]:
            k = (run["method"], run["lr"], run["seed"])
            if k in runs and any(runs[k].get(f) != run.get(f) for f in same):
                raise ZotuneError(f"cannot merge: {folder} has a different {k[0]} run at lr {k[1]:g}, seed {k[2]}; "
                                  "were the benches run with different code?")
            runs.setdefault(k, run)
    out = check_output(Path(out))
    head = {**{k: reports[0][k] for k in ("model", "task", "metric", "forwards", "split")},
            "merged_from": [str(f) for f in folders],
            "configs": [c for r in reports for c in (r["configs"] if "configs" in r else [r["config"]])]}
    work = work_dir(out)
    if work.exists():
        raise ZotuneError(f"{work} is in the way (an interrupted merge or run); delete it")
    work.mkdir(parents=True)
    try:
        rows = write_report(work, head, list(runs.values()), key["select"], key["calibration"], key["bootstrap"],
                            key["bootstrap_seed"])
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return rows
