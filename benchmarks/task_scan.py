"""Rank BIG-bench JSON tasks as candidates for the task search: multiple choice, enough examples, short options.

Reads every task.json in the cached BIG-bench sdist once (about a minute), keeps the multiple-choice tasks
(every example has target_scores) with at least ``--min-examples`` usable examples, at most ``--max-options``
options per example, and every option at most ``--max-option-tokens`` tokens of the model's tokenizer (after
the space that joins it to the prompt, as scoring does). Prints them by mean prompt length in tokens, the cost
that sets a run's time on a CPU, with the share of the most common gold option (a task that is mostly one class
can be "learned" by its label prior alone). Writes nothing but ``--out`` (JSON), if given.

    python benchmarks/task_scan.py --out /tmp/scan.json
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

from transformers import AutoTokenizer

from finetune.data.models import fetch_embedded
from finetune.data.tasks import bigbench_examples, bigbench_source, bigbench_task_jsons


def scan(source: Path, tokenizer, min_examples: int, max_options: int, max_option_tokens: int) -> list[dict]:
    rows = []
    for name, task in bigbench_task_jsons(source):
        if not task.get("examples") or not all("target_scores" in row for row in task["examples"]):
            continue
        examples = [ex for ex in bigbench_examples(task) if ex.options]
        if len(examples) < min_examples:
            continue
        n_options = max(len(ex.options) for ex in examples)
        if n_options > max_options:
            continue
        option_tokens = max(len(tokenizer(o, add_special_tokens=False).input_ids)
                            for ex in examples for o in ex.options)
        if option_tokens > max_option_tokens:
            continue
        sample = examples[:200]
        labels = collections.Counter(ex.options[ex.label].strip() for ex in examples)
        rows.append({
            "task": name,
            "examples": len(examples),
            "options": n_options,
            "option_tokens": option_tokens,
            "prompt_tokens": round(statistics.mean(len(tokenizer(ex.prompt).input_ids) for ex in sample)),
            "majority": round(max(labels.values()) / len(examples), 3),
            "labels": [w for w, _ in labels.most_common(4)],
        })
    return sorted(rows, key=lambda r: r["prompt_tokens"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-examples", type=int, default=500)
    p.add_argument("--max-options", type=int, default=10)
    p.add_argument("--max-option-tokens", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(fetch_embedded())
    rows = scan(bigbench_source(), tokenizer,
                args.min_examples, args.max_options, args.max_option_tokens)
    for r in rows:
        print(f"{r['prompt_tokens']:5d} tok  {r['examples']:6d} ex  {r['options']:2d} opt "
              f"({r['option_tokens']} tok)  majority {r['majority']:.2f}  {r['task']}  {r['labels']}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
