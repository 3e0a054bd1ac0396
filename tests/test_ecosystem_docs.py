"""The Python examples of docs/ecosystem.md (the blocks marked <!-- tested -->) run as written."""
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def marked_blocks() -> list[str]:
    text = (ROOT / "docs" / "ecosystem.md").read_text()
    return re.findall(r"<!-- tested -->\n```python\n(.*?)```", text, flags=re.S)


def test_the_docs_have_two_tested_examples():
    blocks = marked_blocks()
    assert len(blocks) == 2
    assert "task_from_dataset" in blocks[0] and "ZOTrainer(" in blocks[1]


def test_own_data_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(marked_blocks()[0], "docs/ecosystem.md (own data)", "exec"), scope)
    task = scope["task"]
    assert task.kind == "mc" and (len(task.train), len(task.dev), len(task.test)) == (12, 4, 4)
    assert all(e.options == (" terrible", " great") for e in task.train + task.dev + task.test)
    labels = {e.prompt: e.label for e in task.train + task.dev + task.test}
    assert labels == {f"Review {i}: {'loved' if i % 2 else 'hated'} it.": i % 2 for i in range(20)}


def test_zotrainer_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    code = marked_blocks()[1]
    *body, resume = code.rstrip("\n").split("\n")
    assert resume.startswith("trainer.train(resume_from_checkpoint=")
    scope: dict = {}
    exec(compile("\n".join(body), "docs/ecosystem.md (ZOTrainer)", "exec"), scope)
    trainer, model = scope["trainer"], scope["model"]
    assert trainer.state.global_step == 20
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [5, 10, 15, 20]
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [10, 20, 20]  # + evaluate()
    assert (tmp_path / "runs/zo-trainer/checkpoint-10/optimizer.pt").is_file()
    trained = [p.detach().clone() for p in model.parameters()]
    exec(compile(resume, "docs/ecosystem.md (ZOTrainer, resume)", "exec"), scope)   # steps 11-20 again
    assert all(torch.equal(a, b) for a, b in zip(trained, model.parameters()))
