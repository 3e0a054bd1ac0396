"""Can forward passes alone find the subspace where a task's gradient lives?

``benchmarks/subspace_transfer.py`` finds that, within one task, the top singular pair of each weight matrix's
mean gradient holds most of the task's signal, and that another task's subspace does not. A tuner cannot
backpropagate at fine-tuning time, but it can run forward passes. A linear layer's weight gradient is
``sum_t delta_t x_t^T``: its rows lie in the span of the layer's inputs x_t. So this script takes, for every
``nn.Linear``, the top ``--rank`` eigenvectors V of the second moment of its inputs over the task's training
prompts (forward passes only) and measures how much of the task's gradient signal and noise lie in ``G V V^T``
(the perturbation ``z = C V^T`` with C random), against the same rank taken from the gradient itself (the
backpropagation oracle, chosen on the first two quarters of the examples). Signal and noise are estimated as in
``subspace_transfer.py --split``, on the last two quarters of the mean gradients that
``benchmarks/allocation_probe.py --save-gradients`` writes (signal ``<P(G_3), P(G_4)>``, noise ``|P(G_3 - G_4)|^2``).

    python benchmarks/activation_subspace.py --task bigbench:multiemo/hotels_sentence_en:ambivalent=mixed \\
        --gradients /tmp/hotels.pt --examples 128 --rank 1,8,32

Meta-training tasks only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.data.models import load_model, set_threads  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.data.tasks import load_task  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", required=True)
    p.add_argument("--gradients", type=Path, required=True)
    p.add_argument("--examples", type=int, default=128)
    p.add_argument("--rank", default="1,8,32")
    p.add_argument("--last-only", action="store_true", help="inputs at the scored (last) position only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    set_threads(args.threads)
    model, tok = load_model(args.model)
    scorer = TaskScorer(tok)
    task = load_task(args.task, seed=0, n_train=args.examples, n_dev=0, n_test=0)
    grads = torch.load(args.gradients)
    index = {n: j for j, n in enumerate(grads["names"])}
    moments: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and f"{name}.weight" in index:
            def hook(m, inp, out, key=f"{name}.weight"):
                x = inp[0].detach().float()
                x = (x[:, -1] if args.last_only else x).reshape(-1, x.shape[-1])
                moments[key] = moments.get(key, 0) + x.T @ x
            hooks.append(mod.register_forward_hook(hook))
    examples = list(task.train)
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            scorer.loss(model, examples[i:i + 8])  # left padding: pad positions carry the pad token's input
    for h in hooks:
        h.remove()
    result = {"task": args.task, "examples": args.examples, "last_only": args.last_only, "ranks": {}}
    for rank in [int(r) for r in args.rank.split(",")]:
        tot = {k: 0.0 for k in ("signal", "act_signal", "act_noise", "grad_signal", "grad_noise", "noise")}
        for key, M in moments.items():
            j = index[key]
            t = [m[j].float() for m in grads["means"]]
            a, b, n = t[2], t[3], t[2] - t[3]  # evaluated on the last two quarters
            _, vecs = torch.linalg.eigh(M)
            V = vecs[:, -rank:]                                    # top eigenvectors of the input second moment
            G = (t[0] + t[1]) / 2                                  # the oracle chooses on the first two
            Vg = torch.linalg.svd(G, full_matrices=False)[2][:rank].T  # the gradient's own top right vectors
            tot["signal"] += float((a * b).sum())
            tot["noise"] += float((n * n).sum())
            for tag, W in (("act", V), ("grad", Vg)):
                tot[f"{tag}_signal"] += float(((a @ W) * (b @ W)).sum())
                tot[f"{tag}_noise"] += float(((n @ W) ** 2).sum())
        row = {}
        for tag in ("act", "grad"):
            fs, fn = tot[f"{tag}_signal"] / tot["signal"], tot[f"{tag}_noise"] / tot["noise"]
            row[tag] = {"signal_fraction": fs, "noise_fraction": fn, "ratio": fs / fn if fn > 0 else None}
        result["ranks"][rank] = row
        print(json.dumps({"rank": rank, **row}), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
