"""A miniature of the bigbench==1.0.0 sdist for the tests: the same layout, the same JSON shapes, rows written here.

The package index our machines use stopped serving the real sdist (358 MB) on 2026-12-05, so the test suite no
longer reads it: the session fixture in conftest.py writes this archive into a fresh cache instead. The shapes
mirror what the loader meets in the real archive: a plain multiple-choice task with custom prefixes
(``strategyqa``), one with a task prefix (``winowhy``), a task split into subtasks whose own task.json has no
examples (``cause_and_effect``) and a subtask whose rows have an empty input (``cause_and_effect/one_sentence``),
a generation task, a programmatic task (``task.py`` only, not usable), and SQuAD-format data files
(``squad_shifts``).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

ARCHIVE_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def write_sdist(path: Path, files: dict[str, dict | str]) -> Path:
    """A gzipped tar at ``path`` with each of ``files`` (paths under benchmark_tasks/ -> JSON object or text)."""
    with tarfile.open(path, "w:gz") as tar:
        for member, content in files.items():
            data = (content if isinstance(content, str) else json.dumps(content)).encode()
            info = tarfile.TarInfo(ARCHIVE_TASKS + member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _yes_no(i: int) -> dict:
    return {"Yes": 1, "No": 0} if i % 3 else {"Yes": 0, "No": 1}


STRATEGYQA = {
    "name": "strategyqa",
    "example_input_prefix": "Q: ",
    "example_output_prefix": "\nA:",
    "examples": [{"input": "Is it common to see frost during some college commencements?",
                  "target_scores": {"Yes": 1, "No": 0}, "target": "Yes. Some commencements are in December."}]
    + [{"input": f"Is the number {i} larger than {i % 7}?", "target_scores": _yes_no(i), "target": "see scores"}
       for i in range(1, 130)],
}

WINOWHY = {
    "name": "winowhy",
    "task_prefix": "Please answer the following questions about which words certain pronouns refer to.\n",
    "example_input_prefix": "\n",
    "example_output_prefix": "\nThe above reasoning is",
    "examples": [{"input": f"Sentence {i}: the cup is on the table because it is flat. Reason {i}.",
                  "target_scores": {"correct": i % 2, "incorrect": 1 - i % 2}} for i in range(40)],
}

CAUSE_AND_EFFECT = {"name": "cause_and_effect", "subtasks": ["one_sentence"]}  # examples only in its subtasks
ONE_SENTENCE = {
    "name": "one_sentence",
    "task_prefix": "For each example, two events are given. Which event caused the other?",
    "example_input_prefix": "\nexample:",
    "example_output_prefix": "\nanswer:",
    "examples": [{"input": "", "target_scores": {f"The child started crying because the child hurt their knee {i}.": 1,
                                                 f"The child hurt their knee because the child started crying {i}.": 0}}
                 for i in range(12)],
}

GENERATION = {"name": "arithmetic_words", "examples": [{"input": f"{i} plus one is", "target": [f"{i + 1}", " "]}
                                                       for i in range(20)]}


def _squad(prefix: str, articles: int) -> dict:
    """SQuAD v1.1's shape: articles of paragraphs of questions, each with (possibly repeated) gold answers."""
    return {"version": "1.1", "data": [
        {"title": f"{prefix}_{a}", "paragraphs": [
            {"context": f"{prefix} article {a} paragraph {p}: the Denver Broncos won the game {a}-{p}.",
             "qas": [{"id": f"{prefix}{a}{p}{q}", "question": f"Which team won game {a}-{p}, asked {q}?",
                      "answers": [{"text": "Denver Broncos", "answer_start": 30}] * 3} for q in range(2)]}
            for p in range(3)]} for a in range(articles)]}


SQUADDEV = _squad("Super_Bowl_50", 4)
SQUADDEV["data"][0]["paragraphs"][0]["qas"][0]["question"] = "Which NFL team represented the AFC at Super Bowl 50?"
NYT = _squad("nyt", 3)

FILES = {
    "strategyqa/task.json": STRATEGYQA,
    "winowhy/task.json": WINOWHY,
    "cause_and_effect/task.json": CAUSE_AND_EFFECT,
    "cause_and_effect/one_sentence/task.json": ONE_SENTENCE,
    "arithmetic_words/task.json": GENERATION,
    "programmatic_only/task.py": "def evaluate_model(model):\n    return []\n",
    "squad_shifts/task.py": "# squad_shifts is programmatic; its data files are SQuAD JSON\n",
    "squad_shifts/squaddev_v1.1.json": SQUADDEV,
    "squad_shifts/nyt_v1.0.json": NYT,
    "README.md": "# BIG-bench tasks (miniature)\n",
}
# The names usable after bigbench: that FILES gives (the JSON tasks and subtasks with examples, and squad_shifts).
NAMES = ["arithmetic_words", "cause_and_effect/one_sentence", "squad_shifts", "squad_shifts/nyt",
         "squad_shifts/squaddev", "strategyqa", "winowhy"]
