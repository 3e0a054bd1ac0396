"""Task losses against a plain reference: one unpadded sequence per (prompt, continuation), scored with
the model's full logits, for every tiny architecture (left padding and positions included)."""
import math

import pytest
import torch

from finetune.data.models import TINY, load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Example

MC = [
    Example("The sky is", (" blue", " green and wet", " red"), 0),
    Example("A much longer prompt about the weather, which is", (" sunny", " cold"), 1),
    Example("Q: 2+2?\nA:", (" 4", " five or so"), 0),
]
SINGLE = [Example("Is it", (" a", " b"), 1), Example("Longer prompt here. Is it", (" a", " b", " c"), 2)]
GEN = [Example("Question: who?\nAnswer:", answers=(" Ada Lovelace",)),
       Example("A long passage to answer from.\nQuestion: when?\nAnswer:", answers=(" 1843",))]


def reference_logprob(model, tok, prompt, continuation):
    """Mean log-probability of the continuation's tokens, from one unpadded forward pass."""
    head = tok(prompt)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(logp[len(head) + j - 1, t].item() for j, t in enumerate(cont)) / len(cont)


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(request.param, seed=3)


@pytest.mark.parametrize("examples", [MC, SINGLE], ids=["multi-token", "single-token"])
def test_option_loss_matches_reference(tiny, examples):
    model, tok = tiny
    scorer = TaskScorer(tok)
    with torch.no_grad():
        loss = scorer.loss(model, examples).item()
    ref = 0.0
    for e in examples:
        scores = torch.tensor([reference_logprob(model, tok, e.prompt, o) for o in e.options])
        ref += -torch.log_softmax(scores, 0)[e.label].item()
    assert math.isclose(loss, ref / len(examples), rel_tol=1e-4)


def test_generation_loss_matches_reference(tiny):
    model, tok = tiny
    scorer = TaskScorer(tok)
    with torch.no_grad():
        loss = scorer.loss(model, GEN).item()
    ref = -sum(reference_logprob(model, tok, e.prompt, e.answers[0]) for e in GEN) / len(GEN)
    assert math.isclose(loss, ref, rel_tol=1e-4)


def test_accuracy_is_argmax_of_reference_scores(tiny):
    model, tok = tiny
    scorer = TaskScorer(tok)
    expected = 0
    for e in MC + SINGLE:
        scores = [reference_logprob(model, tok, e.prompt, o) for o in e.options]
        expected += int(max(range(len(scores)), key=scores.__getitem__) == e.label)
    assert scorer.evaluate(model, MC + SINGLE, batch_size=2) == pytest.approx(expected / len(MC + SINGLE))


def test_generation_evaluation_is_f1_of_greedy_text():
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok, max_new_tokens=5)
    texts = scorer.generate(model, GEN)
    assert len(texts) == 2 and all("\n" not in t for t in texts)
    # A gold answer equal to the model's own greedy output scores F1 = 1.
    own = [Example(e.prompt, answers=(t or "x",)) for e, t in zip(GEN, texts)]
    value = scorer.evaluate(model, own)
    assert value == pytest.approx(sum(1.0 if t else 0.0 for t in texts) / 2)


def test_long_prompts_are_cut_from_the_left():
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok, max_length=32)
    e = Example("word " * 100 + "end:", (" yes", " no"), 0)
    ids, n = scorer._pair(e.prompt, e.options[0])
    assert len(ids) == 32 and n == len(tok(" yes", add_special_tokens=False)["input_ids"])
    assert tok.decode(ids).endswith("end: yes")
    assert torch.isfinite(scorer.loss(model, [e]))
