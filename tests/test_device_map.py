"""``--device-map``: a model dispatched by accelerate (hooks on every block) fine-tunes bit for bit like the same
model without a device map. On this CPU-only machine every map entry is "cpu": this proves that the engine's
perturbation, restore and update work through accelerate's hooks and that its noise depends only on (seed,
block), not that blocks on several GPUs get the same noise (docs/distributed.md says what was not run)."""
import json

import pytest
import torch
from safetensors.torch import load_file

import cli
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.zo.optim import ZOAdam, ZOSGD
from reference import synthetic_examples

PER_LAYER = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
             "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.mark.parametrize("noise", ["table", "gaussian"])
def test_a_dispatched_model_steps_bit_for_bit_like_a_plain_one(noise):
    torch.set_num_threads(1)
    examples = synthetic_examples(8)
    plain, tok = load_model("tiny-llama")
    mapped, _ = load_model("tiny-llama", device_map=PER_LAYER)
    assert hasattr(mapped.model.layers[0], "_hf_hook") and hasattr(mapped.lm_head, "_hf_hook")
    scorer = TaskScorer(tok)
    for cls, kw in ((ZOSGD, {"momentum": 0.9}), (ZOAdam, {})):
        a, b = cls(plain, lr=1e-3, noise=noise, **kw), cls(mapped, lr=1e-3, noise=noise, **kw)
        for _ in range(3):
            assert a.step(lambda: scorer.loss(plain, examples)) == b.step(lambda: scorer.loss(mapped, examples))
        for (n, p), (_, q) in zip(plain.named_parameters(), mapped.named_parameters()):
            assert torch.equal(p, q), n


def test_cli_device_map_auto_matches_a_plain_run(tmp_path, tasks):
    runs = {}
    for name, extra in (("plain", ["--device", "cpu"]), ("mapped", ["--device-map", "auto"])):
        out = tmp_path / name
        assert cli.main(["finetune", "--model", "tiny-qwen2", "--task", tasks[0], "--steps", "3", "--lr", "1e-3",
                         "--batch-size", "4", "--n-test", "4", "--out", str(out), *extra]) == 0
        runs[name] = (json.loads((out / "metrics.json").read_text()), load_file(str(out / "model" / "model.safetensors")))
    assert runs["plain"][0]["train_loss"] == runs["mapped"][0]["train_loss"]
    assert runs["mapped"][0]["config"]["device_map"] == "auto"
    assert all(torch.equal(v, runs["mapped"][1][k]) for k, v in runs["plain"][1].items())


def test_device_and_device_map_together_are_refused(tmp_path, tasks, capsys):
    code = cli.main(["finetune", "--model", "tiny-llama", "--task", tasks[0], "--steps", "1", "--device", "cpu",
                     "--device-map", "auto", "--out", str(tmp_path / "r")])
    assert code == 2 and capsys.readouterr().err == "error: give --device or --device-map, not both\n"


def test_meta_train_refuses_device_map_in_one_line(tmp_path, tasks, capsys):
    """--device-map is a hardware flag every training command takes (defined once in cli), but meta-training
    has not been made to work on a split model: refused on one line, before any work."""
    code = cli.main(["meta-train", "--model", "tiny-llama", "--tasks", tasks[0], "--steps", "1",
                     "--device-map", "auto", "--out", str(tmp_path / "t.safetensors")])
    assert code == 2
    assert capsys.readouterr().err == "error: --device-map applies to finetune and bench; meta-train runs on one --device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task0.jsonl", "task1.jsonl"]
