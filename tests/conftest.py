"""Fixtures shared by several test modules."""
import json

import pytest


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
