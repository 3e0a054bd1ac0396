"""benchmarks/top_block_probe.py: the features it records at the last position give the model's own option scores,
and the gradient of its small model in the last MLP and the final norm's gain is the full model's (autograd through
every layer), so a step on them needs no backward pass beyond that one block; then one run on a tiny task."""
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from top_block_probe import Top, capture, main, table  # noqa: E402

from finetune.data.models import load_model  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.head import option_token_ids  # noqa: E402
from test_top import WORDS, mixed_examples  # noqa: E402


def test_features_give_the_model_scores_and_the_full_models_gradient():
    torch.manual_seed(0)
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok)
    batch = mixed_examples(6)
    options = option_token_ids(scorer, batch)
    f = capture(model, scorer, batch, batch_size=4)
    tokens = sorted({t for ids in options for t in ids})
    top = Top(model, tokens)
    labels = torch.tensor([e.label for e in batch])
    z = top(f, torch.arange(len(batch)), options)
    # the option scores are log-probabilities over the vocabulary; within the options they are the softmax of z
    # (-inf where an example has two options)
    assert torch.allclose(torch.log_softmax(z, -1), torch.log_softmax(f["scores"], -1), atol=1e-5)

    loss = torch.nn.functional.cross_entropy(z, labels)
    loss.backward()
    model.zero_grad()
    scorer.loss(model, batch).backward()  # the reference: backpropagation through the whole model
    body = model.model
    pairs = [(top.gain, body.norm.weight)] + [(getattr(top.mlp, n).weight, getattr(body.layers[-1].mlp, n).weight)
                                              for n in ("gate_proj", "up_proj", "down_proj")]
    for mine, full in pairs:
        assert full.grad is not None and float(full.grad.abs().max()) > 0
        assert torch.allclose(mine.grad, full.grad, rtol=1e-4, atol=1e-7)


def test_probe_end_to_end(tmp_path):
    path = tmp_path / "task.jsonl"
    rng = random.Random(1)
    with path.open("w") as out:
        for _ in range(120):
            prompt = " ".join(rng.choice(WORDS) for _ in range(3)) + ":"
            out.write(json.dumps({"input": prompt, "options": ["Y", "N"], "label": int("cat" in prompt)}) + "\n")
    main(["--task", str(path), "--model", "tiny-llama", "--steps", "5", "--out", str(tmp_path / "probe.json")])
    got = json.loads((tmp_path / "probe.json").read_text())
    assert set(got["picks"]) == {"head", "head+norm", "head+down", "head+mlp"}
    assert len(got["runs"]) == 3 + 3 * 3 * 5  # the head alone at 3 lrs; each other variant at 3 x 5
    for r in got["runs"]:
        assert (r["extra_lr"] is None) == (r["variant"] == "head")
    best = {v: min(r["dev"]["loss"] for r in got["runs"] if r["variant"] == v) for v in got["picks"]}
    assert all(got["picks"][v]["dev"]["loss"] == best[v] for v in best)  # the pick is the lowest dev loss
    # the table's verdict by hand: the better extra variant by dev loss against the head alone
    picks = got["picks"]
    extra = min(("head+down", "head+mlp"), key=lambda v: picks[v]["dev"]["loss"])
    gain = 100 * (picks[extra]["dev"]["accuracy"] - picks["head"]["dev"]["accuracy"])
    ok = picks[extra]["dev"]["loss"] < picks["head"]["dev"]["loss"] and gain >= 3 - 1e-9
    text = table([tmp_path / "probe.json"])
    assert f"{extra}: {'yes' if ok else 'no'} |" in text and f"Rule met on {int(ok)} of 1 tasks." in text
