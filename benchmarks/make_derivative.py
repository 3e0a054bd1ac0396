"""Make a derivative checkpoint of a base model: a short first-order fine-tune on unrelated text.

    python benchmarks/make_derivative.py --out runs/derivative [--model smollm2-135m] [--steps 40]

The text is the dialogue of BIG-bench ``movie_dialog_same_or_different`` (plain language-model loss on
its inputs; no task is learned), or with ``--text-task python-docs`` prose paragraphs of the Python reference
manual that ships with CPython (``pydoc_data.topics``; no download, for machines without the BIG-bench sdist;
the paragraphs are those of the running Python's version). The result has the base model's architecture and
other weights: the kind of checkpoint a tuner meta-trained on the base must serve. Written with
``save_pretrained``, atomically; prints how far the weights moved.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from finetune.common.atomic import atomic_dir  # noqa: E402
from finetune.data.models import EMBEDDED, load_model, set_threads  # noqa: E402
from finetune.data.tasks import load_task  # noqa: E402


PYTHON_DOCS = "python-docs"


def python_docs_texts(n: int, seed: int) -> list[str]:
    """``n`` distinct prose paragraphs of the Python reference manual (``pydoc_data.topics``), whitespace collapsed,
    over 300 characters each (indented code and grammar blocks left out), in an order fixed by ``seed``."""
    from pydoc_data.topics import topics
    prose = [p for text in topics.values() for p in text.split("\n\n") if not p.startswith(" ")]
    paragraphs = sorted({q for q in (" ".join(p.split()) for p in prose) if len(q) > 300})
    if n > len(paragraphs):
        raise SystemExit(f"python-docs has {len(paragraphs)} paragraphs, fewer than the {n} asked for; "
                         "lower --steps or --batch-size")
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:n]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=EMBEDDED)
    p.add_argument("--text-task", default="bigbench:movie_dialog_same_or_different",
                   help=f"a task whose prompts are the text, or {PYTHON_DOCS} (Python's reference manual)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tok = load_model(args.model)
    n = args.steps * args.batch_size
    texts = (python_docs_texts(n, args.seed) if args.text_task == PYTHON_DOCS else
             [e.prompt for e in load_task(args.text_task, seed=args.seed, n_train=n, n_dev=0, n_test=0).train])
    base = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    tok.padding_side = "right"
    for step in range(args.steps):
        chunk = texts[step * args.batch_size:(step + 1) * args.batch_size]
        batch = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        print(f"step {step + 1}/{args.steps}: LM loss {loss.item():.3f}", flush=True)
    tok.padding_side = "left"
    moved = sum(float((p.detach() - b).norm() ** 2) for p, b in zip(model.parameters(), base)) ** 0.5
    total = sum(float(b.norm() ** 2) for b in base) ** 0.5
    with atomic_dir(Path(args.out)) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    print(f"wrote {args.out}: ||theta - theta_base|| = {moved:.3f} ({moved / total:.2e} of ||theta_base||)")


if __name__ == "__main__":
    main()
