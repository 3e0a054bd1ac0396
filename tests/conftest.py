"""Fixtures shared by several test modules."""
import json
import os
from pathlib import Path

import pytest

import mini_bigbench
from reference import synthetic_examples


@pytest.fixture(scope="session", autouse=True)
def zotune_cache(tmp_path_factory):
    """Every test (and every process a test starts) uses a fresh zotune cache whose BIG-bench sdist is the
    miniature of tests/mini_bigbench.py, never the user's cache or the real sdist. Its models/ folder is the
    user's, so the tests that load the real SmolLM2-135M find it converted (``make test`` fetches it first)."""
    user = Path(os.environ.get("ZOTUNE_CACHE") or Path.home() / ".cache" / "zotune")
    (user / "models").mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("zotune-cache")
    (root / "models").symlink_to(user / "models", target_is_directory=True)
    (root / "downloads").mkdir()
    mini_bigbench.write_sdist(root / "downloads" / "bigbench-1.0.0.tar.gz", mini_bigbench.FILES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOTUNE_CACHE", str(root))
        yield root


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
