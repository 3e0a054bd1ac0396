"""Where should a ZO step put its perturbation? Per-block gradient signal and curvature from per-example
gradients, and the one-step gain of candidate allocations, predicted by the expected-change objective.

The expected-change objective (meta/objective.py, docs/tuner.md) says that with per-block noise scales ``s_b``
and the best step, one ZO step lowers the loss by about ``A^2 / (2 C)``, with

    A = sum_b s_b^2 S_b                     S_b = |grad_b L|^2, the block's share of the true gradient's energy
    C ~ (sum_b s_b^2 G_b)(sum_b s_b^2 T_b)  G_b = E|batch gradient_b|^2 = S_b + (F_b - S_b) / B
                                            T_b = tr H_b, the block's curvature summed over its coordinates

(C's last term, ``2 (s^2 a).H(s^2 a)``, is smaller by a factor of the perturbed dimension and is left out).
Hutchinson estimates of ``tr H_b`` are too noisy for small blocks (reports/objective-check-smollm2), so this
probe uses the empirical Fisher trace ``F_b = mean_i |grad_b l_i|^2`` as the curvature: it is never negative, and
for a cross-entropy loss near calibration it approximates the Gauss-Newton part of the Hessian.
``S_b`` is estimated without bias as ``<mean gradient of one half, mean gradient of the other half>``.

The examples are split into two sets: allocations are chosen from the first set's statistics and their gain is
predicted with the second's, so a candidate does not get credit for fitting the first set's noise.
Candidates: MeZO (every ``s_b = 1``), ``s_b^2 ~ (S_b / F_b)^gamma`` (zero where ``S_b <= 0``) and the top-k blocks
by ``S_b / F_b``; every allocation is energy-normalised (``sum_b n_b s_b^2 = sum_b n_b``, as a tuner is), so the
predicted best step ``eta* = A / C`` is comparable with MeZO's learning rate.

    python benchmarks/allocation_probe.py --task bigbench:multiemo/hotels_sentence_en:ambivalent=mixed \\
        --examples 128 --out reports/tuner-v2-smollm2/probe-hotels.json

Use meta-training tasks only: held-out tasks are not for designing. ``--write-tuner`` saves a candidate as a
static tuner artifact (the bank's last layer zero, its biases set to the allocation), for ``finetune --tuner``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.data.models import load_model, set_threads  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.data.tasks import load_task  # noqa: E402
from pertnn.blocks import model_blocks, trainable_tensors  # noqa: E402


def per_example_stats(model, scorer, examples, params):
    """Per quarter of ``examples``: the per-parameter gradient sums, and per block the sum of |g_i,b|^2."""
    quarters = [examples[i::4] for i in range(4)]
    sums, sq = [], []
    for q, part in enumerate(quarters):
        acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        s2 = torch.zeros(len(params), dtype=torch.float64)
        for i, e in enumerate(part):
            grads = torch.autograd.grad(scorer.loss(model, [e]), params, allow_unused=True)
            for j, g in enumerate(grads):
                if g is not None:
                    acc[j] += g.float()
                    s2[j] += float(g.double().pow(2).sum())
            print(f"\rquarter {q + 1}/4, example {i + 1}/{len(part)}", end="", file=sys.stderr, flush=True)
        sums.append(acc)
        sq.append(s2)
    print(file=sys.stderr)
    return quarters, sums, sq


def set_stats(quarters, sums, sq, pair):
    """S_b (unbiased |grad_b L|^2 from the two quarters' means) and F_b (mean |g_i,b|^2) of two quarters."""
    a, b = pair
    na, nb = len(quarters[a]), len(quarters[b])
    S = torch.stack([(x.double() / na * y.double() / nb).sum() for x, y in zip(sums[a], sums[b])])
    F = (sq[a] + sq[b]) / (na + nb)
    return S, F


def normalise(s2, numels):
    return s2 * numels.sum() / (numels * s2).sum()


def predicted(s2, S, F, batch):
    A = float((s2 * S).sum())
    G = float((s2 * (S + (F - S) / batch)).sum())
    T = float((s2 * F).sum())
    C = G * T
    return {"A": A, "C": C, "eta_star": A / C if A > 0 else None, "gain": A * A / (2 * C) if A > 0 else 0.0}


def candidates(S, F, numels):
    ratio = torch.where(S > 0, S / F.clamp_min(1e-30), torch.zeros_like(S))
    out = {"mezo": torch.ones_like(S)}
    for gamma in (0.25, 0.5, 1.0):
        out[f"ratio^{gamma:g}"] = normalise(ratio.pow(gamma), numels)
    order = ratio.argsort(descending=True)
    for frac in (0.5, 0.2, 0.05):  # the top blocks by ratio holding this fraction of the parameters
        keep = torch.zeros_like(S)
        total = 0.0
        for j in order.tolist():
            if ratio[j] <= 0 or total >= frac * float(numels.sum()):
                break
            keep[j] = 1.0
            total += float(numels[j])
        out[f"top{int(frac * 100)}%"] = normalise(keep, numels)
    return out


def write_tuner(model, s2, path: Path, base_model: str, note: dict) -> None:
    from checkpoints.artifact import Tuner
    from pertnn.bank import inverse_softplus
    tuner = Tuner.for_model(model, base_model)
    sigma = s2.clamp_min(1e-12).sqrt()  # softplus(b2 + bias0) = sigma
    with torch.no_grad():
        tuner.bank.b2.copy_((inverse_softplus(sigma) - tuner.bank.bias0).reshape(-1, 1).to(tuner.bank.b2.dtype))
    tuner.provenance = {"kind": "static allocation (benchmarks/allocation_probe.py)", **note}
    tuner.save_pretrained(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", required=True)
    p.add_argument("--examples", type=int, default=128, help="training examples, split in four quarters")
    p.add_argument("--batch-size", type=int, default=8, help="the fine-tuning batch size the gain is predicted for")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--save-gradients", type=Path, default=None, metavar="PATH",
                   help="also save the four quarters' mean gradients (bf16, one file, about 4 x the model's bf16 "
                        "size) for the subspace analysis of benchmarks/subspace_transfer.py")
    p.add_argument("--write-tuner", nargs=2, action="append", metavar=("CANDIDATE", "PATH"), default=[],
                   help="save this candidate (chosen on all examples) as a static tuner artifact")
    args = p.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    model, tok = load_model(args.model)
    names, params = zip(*trainable_tensors(model))
    numels = torch.tensor([float(p.numel()) for p in params], dtype=torch.float64)
    kinds = [b.kind for b in model_blocks(model)]
    scorer = TaskScorer(tok)
    task = load_task(args.task, seed=0, n_train=args.examples, n_dev=0, n_test=0)
    quarters, sums, sq = per_example_stats(model, scorer, list(task.train), list(params))
    if args.save_gradients is not None:
        args.save_gradients.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"names": list(names), "counts": [len(q) for q in quarters],
                    "means": [[(x / len(q)).to(torch.bfloat16) for x in acc] for q, acc in zip(quarters, sums)]},
                   args.save_gradients)
    S1, F1 = set_stats(quarters, sums, sq, (0, 1))   # choose on these
    S2, F2 = set_stats(quarters, sums, sq, (2, 3))   # predict with these
    cands = candidates(S1, F1, numels)
    rows = {}
    for name, s2 in cands.items():
        rows[name] = predicted(s2, S2, F2, args.batch_size)
        rows[name]["perturbed_fraction"] = float(numels[s2 > 0].sum() / numels.sum())
    base = rows["mezo"]["gain"]
    for r in rows.values():
        r["gain_vs_mezo"] = r["gain"] / base if base > 0 else None
    # Block-level consistency of the signal between the two sets.
    agree = int(((S1 > 0) & (S2 > 0)).sum())
    ratio_all = torch.where((S1 + S2) > 0, (S1 + S2) / (F1 + F2), torch.zeros_like(S1))
    top = ratio_all.argsort(descending=True)[:15].tolist()
    by_kind = {}
    for k in sorted(set(kinds)):
        idx = [j for j, kk in enumerate(kinds) if kk == k]
        by_kind[k] = {"blocks": len(idx), "params": float(numels[idx].sum()),
                      "S_share": float((S1 + S2)[idx].sum() / (S1 + S2).sum()),
                      "F_share": float((F1 + F2)[idx].sum() / (F1 + F2).sum())}
    summary = {"model": args.model, "task": args.task, "examples": args.examples, "batch_size": args.batch_size,
               "blocks": len(params), "blocks_with_positive_signal_in_both_sets": agree,
               "signal_total": [float(S1.sum()), float(S2.sum())], "fisher_total": [float(F1.sum()), float(F2.sum())],
               "by_kind": by_kind, "candidates": rows,
               "top_blocks_by_signal_per_curvature": [{"name": names[j], "numel": int(numels[j]),
                                                      "S": float((S1 + S2)[j] / 2), "F": float((F1 + F2)[j] / 2)}
                                                     for j in top],
               "per_block": {"names": list(names), "S1": S1.tolist(), "F1": F1.tolist(), "S2": S2.tolist(),
                             "F2": F2.tolist()},
               "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, allow_nan=False))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_block",)}, indent=1))
    if args.write_tuner:
        S, F = set_stats(quarters, sums, sq, (0, 2))
        Sb, Fb = set_stats(quarters, sums, sq, (1, 3))
        all_cands = candidates((S + Sb) / 2, (F + Fb) / 2, numels)
        for name, path in args.write_tuner:
            if name not in all_cands:
                raise SystemExit(f"error: unknown candidate {name!r}; use one of {', '.join(all_cands)}")
            pred = predicted(all_cands[name], S2, F2, args.batch_size)
            write_tuner(model, all_cands[name], Path(path), args.model,
                        {"task": args.task, "examples": args.examples, "candidate": name,
                         "predicted_eta_star": pred["eta_star"]})
            print(f"wrote {path} ({name})")


if __name__ == "__main__":
    main()
