"""benchmarks/make_derivative.py with the text that ships with Python (``--text-task python-docs``): the paragraphs
it reads, and one derivative of a tiny model written, loadable, moved by the language-model steps only."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from make_derivative import main, python_docs_texts  # noqa: E402

from finetune.data.models import load_model  # noqa: E402


def test_python_docs_paragraphs_are_prose_distinct_and_seeded():
    from pydoc_data.topics import topics
    texts = python_docs_texts(50, seed=0)
    assert len(texts) == len(set(texts)) == 50
    assert all(len(t) > 300 and "\n" not in t and "  " not in t for t in texts)
    whole = " ".join(" ".join(t.split()) for t in topics.values())
    assert all(t in whole for t in texts)  # each one is the manual's own words
    assert python_docs_texts(50, seed=0) == texts and python_docs_texts(50, seed=1) != texts
    with pytest.raises(SystemExit, match="fewer than the 100000 asked for"):
        python_docs_texts(100_000, seed=0)


def test_a_tiny_derivative_is_written_and_moved(tmp_path, capsys):
    out = tmp_path / "derivative"
    main(["--out", str(out), "--model", "tiny-llama", "--text-task", "python-docs", "--steps", "2",
          "--batch-size", "2", "--max-length", "32", "--threads", "1"])
    assert "wrote" in capsys.readouterr().out
    base, _ = load_model("tiny-llama")
    derived, _ = load_model(str(out))
    moved = [name for (name, p), q in zip(base.named_parameters(), derived.parameters()) if not torch.equal(p, q)]
    assert moved and len(moved) == len(list(base.parameters()))  # AdamW moves every trained tensor
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no leftovers
