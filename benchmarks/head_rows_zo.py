"""Can ZO learn a task by perturbing only the output-head rows of the task's option tokens?

A tuner could put its perturbation where a task's answer is read out: the rows of the (tied) output head for the
option tokens, a few thousand numbers (issue 17 suggests it). Training only those rows is a linear probe on the
last hidden state. This checks, on one task, how far that probe gets with backpropagation (the ceiling: Adam on
the full training set) and with ZO (two-point SPSA with Gaussian noise, batch 8, the same forward budget as a
MeZO run), optionally with the noise preconditioned by the hidden states' second moment (``--whiten``,
available from forward passes alone).

To be fast on a CPU it works on cached last hidden states: it moves the rows only where they act as the head
and ignores that, tied, they are also the input embeddings of those tokens (which matters only where an
option word appears in a prompt). It needs single-token options.

    python benchmarks/head_rows_zo.py --task bigbench:multiemo/hotels_sentence_en:ambivalent=mixed \\
        --out reports/tuner-v2-smollm2/head-rows-hotels.json

Use meta-training tasks only: held-out tasks are not for designing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.data.models import load_model, set_threads  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.data.tasks import load_task  # noqa: E402


def hidden_states(model, scorer, examples, batch=16):
    """Last hidden state at the position that predicts the option token, labels, option token ids."""
    H, Y, O = [], [], []
    for i in range(0, len(examples), batch):
        part = examples[i:i + batch]
        rows = [scorer.token_ids(e.prompt, True)[-scorer.max_length:] for e in part]
        with torch.no_grad():
            out = model.model(**scorer.batch_inputs(rows, torch.device("cpu")))
        H.append(out.last_hidden_state[:, -1].float())
        for e in part:
            ids = [scorer.token_ids(o, False) for o in e.options]
            if any(len(x) != 1 for x in ids):
                raise SystemExit("error: this check needs single-token options")
            Y.append(e.label)
            O.append([x[0] for x in ids])
    return torch.cat(H), torch.tensor(Y), O


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", required=True)
    p.add_argument("--lrs", default="3e-6,1e-5,3e-5,1e-4,3e-4")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--forwards", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--whiten", type=float, default=0.0,
                   help="precondition the noise by M^(-1/2), M the hidden states' second moment, its eigenvalues "
                        "floored at this fraction of the largest (0: plain Gaussian noise)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None, help="keep the hidden states here between runs")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    set_threads(args.threads)
    t0 = time.time()
    if args.cache is not None and args.cache.exists():
        data = torch.load(args.cache)
    else:
        model, tok = load_model(args.model)
        scorer = TaskScorer(tok)
        task = load_task(args.task, seed=0, n_train=1000, n_dev=100, n_test=200)  # bench's default split, seed 0
        data = {k: hidden_states(model, scorer, list(getattr(task, k))) for k in ("train", "dev", "test")}
        data["head_rows"] = {o: model.get_output_embeddings().weight[o].detach().clone()
                             for k in ("train", "dev", "test") for ex in data[k][2] for o in ex}
        if args.cache is not None:
            torch.save(data, args.cache)
    opts = sorted(data["head_rows"])
    col = {o: j for j, o in enumerate(opts)}

    def split(k):
        H, Y, O = data[k]
        M = torch.full((len(O), max(len(x) for x in O)), -1)
        for i, x in enumerate(O):
            M[i, :len(x)] = torch.tensor([col[o] for o in x])
        return H, Y, M

    sets = {k: split(k) for k in ("train", "dev", "test")}

    def loss_acc(W, H, Y, M):
        s = (H @ W.T).gather(1, M.clamp(min=0)).masked_fill(M < 0, float("-inf"))
        return F.cross_entropy(s, Y).item(), (s.argmax(1) == Y).float().mean().item()

    W0 = torch.stack([data["head_rows"][o] for o in opts])
    Htr, Ytr, Mtr = sets["train"]
    P = None
    if args.whiten > 0:
        ev, U = torch.linalg.eigh(Htr.T @ Htr / len(Htr))
        P = U @ torch.diag(ev.clamp_min(args.whiten * ev.max()).rsqrt()) @ U.T
    result = {"task": args.task, "options": opts, "dims": W0.numel(), "forwards": args.forwards,
              "batch_size": args.batch_size, "whiten": args.whiten,
              "start": {k: loss_acc(W0, *sets[k]) for k in ("dev", "test")}, "zo": [], "fo": []}
    steps = args.forwards // 2
    for seed in [int(s) for s in args.seeds.split(",")]:
        order = torch.randperm(len(Ytr), generator=torch.Generator().manual_seed(seed))
        for lr in [float(x) for x in args.lrs.split(",")]:
            gen, W, curve = torch.Generator().manual_seed(seed), W0.clone(), []
            for step in range(steps):
                idx = order[(torch.arange(args.batch_size) + args.batch_size * step) % len(Ytr)]
                z = torch.randn(W.shape, generator=gen)
                z = z if P is None else z @ P
                lp = loss_acc(W + args.eps * z, Htr[idx], Ytr[idx], Mtr[idx])[0]
                lm = loss_acc(W - args.eps * z, Htr[idx], Ytr[idx], Mtr[idx])[0]
                if not math.isfinite(lp + lm):
                    break
                W -= lr * (lp - lm) / (2 * args.eps) * z
                if (step + 1) % (steps // 5) == 0:
                    curve.append({"forwards": 2 * (step + 1), "dev_loss": loss_acc(W, *sets["dev"])[0],
                                  "test_loss": loss_acc(W, *sets["test"])[0]})
            row = {"seed": seed, "lr": lr, **{k: loss_acc(W, *sets[k]) for k in ("dev", "test")}, "curve": curve}
            result["zo"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    for lr in (1e-3, 1e-2):  # the ceiling: Adam on the rows, full training set, 300 steps
        W = W0.clone().requires_grad_()
        opt = torch.optim.Adam([W], lr=lr)
        for _ in range(300):
            s = (Htr @ W.T).gather(1, Mtr.clamp(min=0)).masked_fill(Mtr < 0, float("-inf"))
            loss = F.cross_entropy(s, Ytr)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            result["fo"].append({"lr": lr, **{k: loss_acc(W, *sets[k]) for k in ("dev", "test")}})
        print(json.dumps(result["fo"][-1]), flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
