"""Signal-to-noise ratio of meta-gradients for per-block perturbation scales (issue 17, item 2).

Three estimators, each the gradient of a meta-objective with respect to the scales ``sigma_b`` (one per block,
every one 1 here: MeZO's allocation, at the pretrained weights), estimated from one training batch each:

* ``today``: the closed-form meta-gradient the meta-trainer follows (``meta.metagrad.closed_form``): one noise
  draw u, the SPSA step and the meta loss on the same batch, ``dL(theta')/dsigma_b = -eta g <grad_b L(theta'), u_b>``;
* ``objective``: the expected-change objective (``meta.objective``), ``dE[dL_held]/dsigma_b = 2 sigma_b
  dE/d(s_b^2)``: the expectation over the noise, from one (training batch, held-out batch) pair, with
  ``--probes`` Hutchinson probes for the traces (``--probes 0`` leaves this estimator out);
* ``first_order``: that objective's first-order part alone, ``-2 eta <a_b, h_b>`` (two gradients, no curvature).

The SNR of an estimator ``g`` is ``|E g|^2 / E|g - E g|^2``. ``|E g|^2`` is estimated without bias by the mean of
``<g_r, g_s>`` over estimates from *different* batch pairs (estimates from one pair share its batches, so their
products would count batch noise as signal), and ``E|g|^2`` by the mean of ``|g_r|^2``. Averaging k independent
estimates multiplies the SNR by k at k times the cost, so estimators of different cost compare by SNR per second.
Each figure is given twice: for the whole vector, and for its part orthogonal to the block sizes ``n_b``, the part
an energy-normalised bank can act on (at sigma = 1 the constraint ``sum n_b sigma_b^2 = const`` removes the
direction ``n``). The 95% intervals resample batch pairs; the table mode also gives each estimator's SNR minus
today's, per estimate and per second, resampling the pairs of both together.

    python benchmarks/metagrad_snr.py --task bigbench:multiemo/hotels_sentence_en:ambivalent=mixed \\
        --out reports/tuner-v2-smollm2/metagrad-snr/hotels.json
    python benchmarks/metagrad_snr.py table hotels.json hyperbaton.json   # a markdown summary of finished runs

Use meta-training tasks only: held-out tasks are not for designing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.common.errors import ZotuneError  # noqa: E402
from finetune.data.models import load_model, set_threads  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.data.tasks import load_task  # noqa: E402
from finetune.zo.engine import ZOEngine  # noqa: E402
from meta.metagrad import closed_form  # noqa: E402
from meta.objective import allocation_gradient, block_terms, hutchinson_traces  # noqa: E402
from pertnn import StepHistory  # noqa: E402
from pertnn.blocks import trainable_tensors  # noqa: E402

ESTIMATORS = ("today", "objective", "first_order")


class FixedScales(nn.Module):
    """Stands in for the PertNN bank: sigma is a leaf, so the meta-gradient the closed form sends into the bank
    lands in ``s.grad`` block by block."""

    def __init__(self, n_blocks: int):
        super().__init__()
        self.s = nn.Parameter(torch.ones(n_blocks))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.s


def project_out(vectors: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Each row of ``vectors`` without its component along ``direction``."""
    d = direction.double() / direction.double().norm()
    return vectors - (vectors @ d)[:, None] * d


def snr(vectors: torch.Tensor, groups: list[int]) -> dict:
    """``|E g|^2 / E|g - E g|^2`` from rows ``vectors`` (one estimate each) and the batch pair each came from:
    the signal from products of estimates of different pairs only (module docstring)."""
    gram = vectors @ vectors.T
    g = torch.tensor(groups)
    cross = g[:, None] != g[None, :]
    if not bool(cross.any()):
        raise ValueError("need estimates from at least two batch pairs")
    signal = float(gram[cross].mean())
    total = float(torch.diagonal(gram).mean())
    noise = total - signal
    return {"signal": signal, "total": total, "snr": signal / noise if noise > 0 else None}


def bootstrap_snr(vectors: torch.Tensor, groups: list[int], draws: int = 1000,
                  seed: int = 0) -> list[float | None]:
    """:func:`snr` of ``draws`` resamples of the batch pairs (a pair drawn twice counts as two pairs that share
    batches, so their products are left out of the signal too); None where a resample holds one pair only. The
    resamples depend only on the set of pairs and ``seed``, so two estimators measured on the same pairs are
    resampled together (paired)."""
    gen = torch.Generator().manual_seed(seed)
    pairs = sorted(set(groups))
    rows = {p: [i for i, q in enumerate(groups) if q == p] for p in pairs}
    values: list[float | None] = []
    for _ in range(draws):
        chosen = [pairs[j] for j in torch.randint(len(pairs), (len(pairs),), generator=gen).tolist()]
        if len(set(chosen)) < 2:
            values.append(None)
            continue
        index = [i for p in chosen for i in rows[p]]
        # products within one original pair are left out, whether it was drawn once or twice
        value = snr(vectors[index], [groups[i] for i in index])["snr"]
        values.append(float("inf") if value is None else value)
    return values


def interval(values: list[float | None]) -> list[float] | None:
    """The 95% percentile interval of the finite-or-infinite values, None left out."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    q = torch.tensor(kept, dtype=torch.float64).clamp(-1e300, 1e300)
    return [float(q.quantile(0.025)), float(q.quantile(0.975))]


def summary(vectors: torch.Tensor, groups: list[int], seconds: float) -> dict:
    out = snr(vectors, groups)
    out["interval"] = interval(bootstrap_snr(vectors, groups))
    out["seconds_per_estimate"] = seconds
    out["snr_per_second"] = None if out["snr"] is None else out["snr"] / seconds
    return out


def difference(a: tuple[torch.Tensor, list[int], float], b: tuple[torch.Tensor, list[int], float]) -> dict:
    """SNR per estimate and per second of estimator a minus b, with paired 95% intervals (both measured on the
    same batch pairs): is a better than b?"""
    (va, ga, ta), (vb, gb, tb) = a, b
    if sorted(set(ga)) != sorted(set(gb)):
        raise ValueError("the two estimators were not measured on the same batch pairs")
    sa, sb = snr(va, ga)["snr"], snr(vb, gb)["snr"]
    ba, bb = bootstrap_snr(va, ga), bootstrap_snr(vb, gb)
    both = [(x, y) for x, y in zip(ba, bb) if x is not None and y is not None]
    return {"per_estimate": None if sa is None or sb is None else sa - sb,
            "per_estimate_interval": interval([x - y for x, y in both]),
            "per_second": None if sa is None or sb is None else sa / ta - sb / tb,
            "per_second_interval": interval([x / ta - y / tb for x, y in both])}


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


def measure(args) -> dict:
    model, tok = load_model(args.model)
    engine = ZOEngine(model, noise=args.noise)
    params = engine.params
    numels = torch.tensor([p.numel() for p in params], dtype=torch.float64)
    scorer = TaskScorer(tok)
    b = args.batch_size
    task = load_task(args.task, seed=0, n_train=args.pairs * b, n_dev=args.pairs * b, n_test=0)
    theta0 = [p.detach().clone() for p in params]
    scales, history = FixedScales(len(params)), StepHistory(len(params))
    ones = torch.ones(len(params), dtype=torch.float64)
    gen = torch.Generator().manual_seed(args.seed)
    estimators = estimators_of(args)
    rows = {k: [] for k in estimators}
    groups = {k: [] for k in estimators}
    seconds = {k: 0.0 for k in (*estimators, "first_order_step")}
    for i in range(args.pairs):
        train, held = task.train[i * b:(i + 1) * b], task.dev[i * b:(i + 1) * b]
        for k in range(args.draws):
            scales.zero_grad(set_to_none=True)
            start = time.perf_counter()
            closed_form(engine, scales, history, lambda m: scorer.loss(m, train), seed=args.seed * 10_007 + i * 101 + k,
                        eps=args.eps, lr=args.lr)
            seconds["today"] += time.perf_counter() - start
            rows["today"].append(scales.s.grad.double().clone())
            groups["today"].append(i)
            with torch.no_grad():  # back to the pretrained weights exactly (the closed form restores up to rounding)
                for p, p0 in zip(params, theta0):
                    p.copy_(p0)
                    p.grad = None
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            scorer.loss(model, train).backward()
        seconds["first_order_step"] += time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        terms = block_terms(params, lambda: scorer.loss(model, train), lambda: scorer.loss(model, held), probes=0)
        gradients = time.perf_counter() - start
        rows["first_order"].append(-2 * args.lr * terms.dot)
        seconds["first_order"] += gradients
        groups["first_order"].append(i)
        line = {"pair": i, "sum_first_order": float(rows["first_order"][-1].sum()),
                "sum_today": [float(r.sum()) for r in rows["today"][-args.draws:]]}
        if "objective" in estimators:
            start = time.perf_counter()
            terms.trace = hutchinson_traces(params, terms.hvp, args.probes, gen)
            rows["objective"].append(2 * allocation_gradient(terms, ones, args.lr))
            seconds["objective"] += gradients + time.perf_counter() - start
            groups["objective"].append(i)
            line |= {"sum_objective": float(rows["objective"][-1].sum()),
                     "negative_traces": int((terms.trace < 0).sum())}
        print(json.dumps(line), flush=True)
    return {"rows": {k: torch.stack(v) for k, v in rows.items()}, "groups": groups, "seconds": seconds,
            "numels": numels, "names": [n for n, _ in engine.blocks]}


def estimators_of(args) -> tuple[str, ...]:
    """What a run measures: the full objective only with Hutchinson probes (``--probes 0`` skips it)."""
    return ESTIMATORS if args.probes > 0 else tuple(k for k in ESTIMATORS if k != "objective")


def report(args, measured: dict) -> dict:
    rows, groups, seconds, numels = (measured[k] for k in ("rows", "groups", "seconds", "numels"))
    estimators = estimators_of(args)
    per = {k: seconds[k] / len(groups[k]) for k in estimators}
    fo_step = seconds["first_order_step"] / args.pairs
    out = {"model": args.model, "task": args.task, "pairs": args.pairs, "batch_size": args.batch_size,
           "draws": args.draws, "probes": args.probes, "lr": args.lr, "eps": args.eps, "noise": args.noise,
           "blocks": len(numels), "first_order_step_seconds": fo_step,
           "cost_in_first_order_steps": {k: per[k] / fo_step for k in estimators}}
    for label, transform in (("whole", lambda v: v), ("allocation", lambda v: project_out(v, numels))):
        out[label] = {k: summary(transform(rows[k]), groups[k], per[k]) for k in estimators}
        means = {k: transform(rows[k]).mean(0) for k in estimators}
        out[label]["cosine_of_means"] = {f"{x} vs {y}": cosine(means[x], means[y])
                                         for x, y in itertools.combinations(estimators, 2)}
    out["estimates"] = {k: rows[k].tolist() for k in estimators}
    out["groups"] = groups
    out["names"] = measured["names"]
    return out


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def block_sizes(model: str, names: list[str]) -> torch.Tensor:
    """``n_b`` for the blocks ``names`` of ``model`` (loaded again: the run files hold no sizes)."""
    blocks = trainable_tensors(load_model(model)[0])
    if [n for n, _ in blocks] != names:
        raise SystemExit(f"the blocks of {model} are not the ones the run measured")
    return torch.tensor([p.numel() for _, p in blocks], dtype=torch.float64)


def table(paths: list[Path]) -> str:
    """A markdown summary of finished runs: each estimator's SNR [95% interval] and cost, whole and allocation
    part; each estimator's SNR minus today's, per estimate and per second, with paired intervals; the cosine
    between the estimators' mean meta-gradients, and between two tasks' (does the signal transfer?)."""
    runs = [json.loads(p.read_text()) for p in paths]
    sizes = block_sizes(runs[0]["model"], runs[0]["names"])
    if any(r["names"] != runs[0]["names"] for r in runs):
        raise SystemExit("the runs measured different blocks")
    parts = {"whole": lambda v: v, "allocation": lambda v: project_out(v, sizes)}

    def cell(x: float | None, ci: list[float] | None) -> str:
        return f"{_fmt(x)} [{'n/a' if ci is None else f'{_fmt(ci[0])}, {_fmt(ci[1])}'}]"

    lines = ["| task | pairs | part | estimator | SNR of one estimate [95% CI] | seconds each "
             "| first-order steps each | SNR per second |", "|---|---|---|---|---|---|---|---|"]
    diffs = ["| task | pairs | part | SNR minus today's | per estimate [95% CI] | per second [95% CI] |",
             "|---|---|---|---|---|---|"]
    cosines = ["| task | part | pair of estimators | cosine of their mean meta-gradients |", "|---|---|---|---|"]
    for run in runs:
        names = [k for k in ESTIMATORS if k in run["estimates"]]
        vectors = {k: torch.tensor(run["estimates"][k], dtype=torch.float64) for k in names}
        for part, transform in parts.items():
            for k in names:
                x = run[part][k]
                lines.append(f"| {run['task']} | {run['pairs']} | {part} | {k} | {cell(x['snr'], x['interval'])} "
                             f"| {x['seconds_per_estimate']:.1f} | {run['cost_in_first_order_steps'][k]:.1f} "
                             f"| {_fmt(x['snr_per_second'])} |")
            for k in names[1:]:
                d = difference((transform(vectors[k]), run["groups"][k], run[part][k]["seconds_per_estimate"]),
                               (transform(vectors["today"]), run["groups"]["today"],
                                run[part]["today"]["seconds_per_estimate"]))
                diffs.append(f"| {run['task']} | {run['pairs']} | {part} | {k} "
                             f"| {cell(d['per_estimate'], d['per_estimate_interval'])} "
                             f"| {cell(d['per_second'], d['per_second_interval'])} |")
            for pair, value in run[part]["cosine_of_means"].items():
                cosines.append(f"| {run['task']} | {part} | {pair} | {value:.3f} |")
    lines += [""] + diffs + [""] + cosines
    if len(runs) == 2:
        lines += ["", "cosine between the two tasks' mean meta-gradients (whole / allocation part):"]
        for k in ESTIMATORS:
            if all(k in r["estimates"] for r in runs):
                x, y = (torch.tensor(r["estimates"][k], dtype=torch.float64).mean(0) for r in runs)
                px, py = project_out(torch.stack([x, y]), sizes)
                lines.append(f"- {k}: {cosine(x, y):.3f} / {cosine(px, py):.3f}")
    return "\n".join(lines)


def main() -> None:
    try:
        run()
    except ZotuneError as e:  # a bad task, model or path: one line, no traceback
        sys.exit(f"error: {e}")


def run() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "table":
        paths = [Path(a) for a in sys.argv[2:]]
        missing = [str(x) for x in paths if not x.is_file()]
        if not paths or missing:
            raise ZotuneError(f"give finished run files to table (missing: {', '.join(missing) or 'none given'})")
        print(table(paths))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", required=True)
    p.add_argument("--pairs", type=int, default=12, help="(training batch, held-out batch) pairs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--draws", type=int, default=4, help="today's estimates (noise draws) per training batch")
    p.add_argument("--probes", type=int, default=2,
                   help="Hutchinson probes per pair for the objective (0: today's and the first-order part only)")
    p.add_argument("--lr", type=float, default=3e-5, help="the ZO step eta both objectives prepare for")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--noise", default="auto", help="the engine's noise for today's estimator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.pairs < 2 or args.draws < 1 or args.probes < 0:
        p.error("need --pairs >= 2, --draws >= 1 and --probes >= 0")
    try:  # before the measurement, not after it
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZotuneError(f"cannot write --out {args.out}: {e.strerror}; choose another path") from e
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no double backward
        out = report(args, measure(args))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, allow_nan=False))
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("estimates", "groups", "names")}, indent=1))


if __name__ == "__main__":
    main()
