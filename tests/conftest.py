"""Fixtures shared by several test modules."""
import json

import pytest

from reference import synthetic_examples


@pytest.fixture
def tasks(tmp_path):
    """Two small JSONL tasks (40 two-option examples each); their paths."""
    paths = []
    for k in range(2):
        path = tmp_path / f"task{k}.jsonl"
        with path.open("w") as f:
            for i in range(40):
                f.write(json.dumps({"input": f"{k}: item {i} is", "options": [" odd", " even"], "label": i % 2}) + "\n")
        paths.append(str(path))
    return paths


@pytest.fixture
def jsonl(tmp_path):
    """A JSONL multiple-choice task of 80 synthetic examples (80% 'yes'); its path."""
    path = tmp_path / "task.jsonl"
    with path.open("w") as f:
        for e in synthetic_examples(80):
            f.write(json.dumps({"input": e.prompt, "options": list(e.options), "label": e.label}) + "\n")
    return path
