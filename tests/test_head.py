"""The head step (finetune/head.py): its closed-form gradient against autograd, its update against
torch.optim.Adam, its wiring into a ZO run against an independent computation, resume, and its refusals."""
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cli
from finetune.data.batches import batches
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Example, Task
from finetune.trainer import FinetuneConfig, train
from finetune.head import HeadStep, head_gradient
from reference import FakeGroup, bad, kill_at_call

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "rock"]


def one_token_examples(n, seed=0):
    """Multiple choice with one-byte options 'Y'/'N' (one token each for the tiny models' byte tokenizer), which
    never occur in the prompts: the tied rows of Y and N then act as the output head only."""
    rng = random.Random(seed)
    return [Example(" ".join(rng.choice(WORDS) for _ in range(3)) + ":", ("Y", "N"), int(rng.random() < 0.3))
            for _ in range(n)]


def _tiny():
    model, tok = load_model("tiny-llama")
    return model, TaskScorer(tok)


def _ids(scorer):
    return [scorer.token_ids(o, False)[0] for o in ("Y", "N")]


def test_head_gradient_equals_autograd_in_the_option_rows():
    model, scorer = _tiny()
    batch = one_token_examples(6)
    ids = _ids(scorer)
    assert all(len(scorer.token_ids(o, False)) == 1 for o in ("Y", "N"))
    step = HeadStep(model, scorer, lr=1e-3)
    with torch.no_grad(), step.watching(batch):
        scorer.loss(model, batch)
        scorer.loss(model, batch)  # a second pass: the mean over passes is the same gradient, not twice it
    ours = step.gradient()
    model.zero_grad()
    scorer.loss(model, batch).backward()
    ref = model.get_output_embeddings().weight.grad
    assert sorted(ours) == sorted(ids)
    for t in ids:
        assert torch.allclose(ours[t], ref[t], rtol=1e-5, atol=1e-7), t
        assert ref[t].abs().sum() > 0


def test_head_step_is_adam_on_the_rows():
    """Three steps with the gradients it recorded equal torch.optim.Adam (same betas and eps) on the rows."""
    model, scorer = _tiny()
    ids = _ids(scorer)
    weight = model.get_output_embeddings().weight
    ref = torch.nn.Parameter(weight.detach()[ids].clone())
    adam = torch.optim.Adam([ref], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    step = HeadStep(model, scorer, lr=1e-2)
    for k in range(3):
        batch = one_token_examples(4, seed=k)
        with torch.no_grad(), step.watching(batch):
            scorer.loss(model, batch)
            scorer.loss(model, batch)  # a second pass: the step uses the mean of the two
        g = step.gradient()
        ref.grad = torch.stack([g[t] for t in ids])
        adam.step()
        step.step()
        assert torch.allclose(weight.detach()[ids], ref.detach(), rtol=1e-6, atol=1e-8), k
    assert step.gradient() == {}  # forgotten after the step


def test_a_zo_run_with_the_head_step_matches_an_independent_computation():
    """Step 1 of MeZO with the head step: the option rows end where MeZO alone puts them plus one Adam step
    (first step: lr * g / (|g| + eps)) along the mean over its two perturbed passes of the option rows'
    gradient, computed here by autograd through the option cross-entropy from each pass's head input and
    option logits (the rows were perturbed in those passes, so the logits are read, not recomputed)."""
    examples = one_token_examples(24)
    task = Task("yn", "mc", examples[:16], [], examples[16:19])  # no dev split; test passes have 3 rows
    base = dict(model="tiny-llama", method="mezo", steps=1, lr=1e-3, eps=1e-2, batch_size=4, seed=3)
    plain, scorer = _tiny()
    train(FinetuneConfig(**base), plain, scorer, task, progress=False)
    model, scorer = _tiny()
    head = model.get_output_embeddings()
    seen = []
    head.register_forward_hook(lambda m, i, o: seen.append((i[0][:, -1].float().clone(),
                                                            o[:, -1].float().clone())))
    train(FinetuneConfig(**base, head_lr=0.05), model, scorer, task, progress=False)
    batch_passes = [(h.clone(), z.clone()) for h, z in seen if len(h) == 4]  # the step's two passes (the evaluations have 3 rows)
    assert len(batch_passes) == 2
    batch = next(batches(task.train, 4, 3))
    ids = _ids(scorer)
    labels = torch.tensor([e.label for e in batch])
    w0 = plain.get_output_embeddings().weight.detach()[ids]  # MeZO's rows after the step (the head step adds on)
    grads = []
    for h, logits in batch_passes:
        z = logits[:, ids].clone().requires_grad_()
        F.cross_entropy(z, labels).backward()
        grads.append(z.grad.T @ h)
    g = (grads[0] + grads[1]) / 2
    expected = w0 - 0.05 * g / (g.abs() + 1e-8)
    got = head.weight.detach()[ids]
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    others = [i for i in range(head.weight.shape[0]) if i not in ids]
    assert torch.equal(head.weight.detach()[others], plain.get_output_embeddings().weight.detach()[others])


def test_the_head_step_follows_the_runs_lr_schedule():
    """Three steps of a run with --schedule linear (ZO lr 0, so only the head moves) against torch.optim.Adam
    under torch's LambdaLR with factors 1, 2/3, 1/3, fed the mean of each step's two passes' option-row gradients
    (autograd through the option cross-entropy, as above). A head step that ignored the schedule would take its
    full lr at steps 2 and 3."""
    examples = one_token_examples(24)
    task = Task("yn", "mc", examples[:16], [], examples[16:19])
    model, scorer = _tiny()
    head = model.get_output_embeddings()
    ids = _ids(scorer)
    ref = torch.nn.Parameter(head.weight.detach()[ids].clone())
    adam = torch.optim.Adam([ref], lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(adam, lambda t: 1 - t / 3)
    seen = []
    head.register_forward_hook(lambda m, i, o: seen.append((i[0][:, -1].float().clone(), o[:, -1].float().clone())))
    cfg = FinetuneConfig(model="tiny-llama", method="mezo", steps=3, lr=0.0, eps=1e-2, batch_size=4, seed=3,
                         head_lr=0.05, schedule="linear")
    train(cfg, model, scorer, task, progress=False)
    passes = [p for p in seen if len(p[0]) == 4]  # the steps' passes (the evaluations have 3 rows)
    assert len(passes) == 6
    for k, batch in zip(range(3), batches(task.train, 4, 3)):
        labels = torch.tensor([e.label for e in batch])
        grads = []
        for h, logits in passes[2 * k:2 * k + 2]:
            z = logits[:, ids].clone().requires_grad_()
            F.cross_entropy(z, labels).backward()
            grads.append(z.grad.T @ h)
        ref.grad = (grads[0] + grads[1]) / 2
        adam.step()
        sched.step()
    assert torch.allclose(head.weight.detach()[ids], ref.detach(), rtol=1e-5, atol=1e-6)


def _jsonl(tmp_path, examples):
    path = tmp_path / "yn.jsonl"
    path.write_text("".join(json.dumps({"input": e.prompt, "options": list(e.options), "label": e.label}) + "\n"
                            for e in examples))
    return str(path)


def _straight_and_resumed(tmp_path, monkeypatch, capsys, argv, killed=None) -> Path:
    """Run ``argv`` to tmp_path/straight, then again to tmp_path/resumed killed in step 5 (snapshots every 3 steps)
    and resumed; return the resumed run's folder. ``killed(out)``, if given, runs between the kill and the resume."""
    assert cli.main(argv + ["--out", str(tmp_path / "straight")]) == 0
    real_loss = kill_at_call(monkeypatch, 2 * 5)  # step 5's first pass: the snapshot of step 3 survives
    out = tmp_path / "resumed"
    with pytest.raises(SystemExit):
        cli.main(argv + ["--out", str(out)])
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    if killed is not None:
        killed(out)
    capsys.readouterr()
    assert cli.main(argv + ["--out", str(out), "--resume"]) == 0
    return out


@pytest.mark.parametrize("head", [["--head-lr", "1e-2"], ["--head-race", "1e-3,1e-1"]], ids=["head-lr", "head-race"])
def test_killed_run_with_the_head_step_resumes_bit_for_bit(tmp_path, monkeypatch, capsys, head):
    task = _jsonl(tmp_path, one_token_examples(60))
    argv = ["finetune", "--model", "tiny-llama", "--task", task, "--steps", "6", "--lr", "1e-3", *head,
            "--batch-size", "4", "--n-test", "8", "--eval-every", "2", "--snapshot-every", "3"]
    out = _straight_and_resumed(tmp_path, monkeypatch, capsys, argv)
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("train_loss", "eval", "eval_history", "head_lr", "head_race"):  # (a race's lanes are in the snapshot)
        assert a.get(key) == b.get(key), key
    ma, _ = load_model(str(tmp_path / "straight" / "model"))
    mb, _ = load_model(str(out / "model"))
    for (k, v), w in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(v, w), k
    mezo = tmp_path / "mezo"  # and the head step did move the run
    assert cli.main([x for x in argv if x not in head] + ["--out", str(mezo)]) == 0
    assert json.loads((mezo / "metrics.json").read_text())["train_loss"] != a["train_loss"]


def test_the_head_step_refuses_what_it_cannot_serve(tmp_path, jsonl, capsys):
    yn = _jsonl(tmp_path, one_token_examples(40))
    base = ["finetune", "--model", "tiny-llama", "--steps", "1", "--batch-size", "4", "--n-test", "4"]
    err = bad(capsys, [*base, "--task", str(jsonl), "--head-lr", "1e-3", "--out", str(tmp_path / "a")])
    assert "one token each" in err and "'yes'" in err  # ' yes' is four byte tokens
    assert "backpropagation" in bad(capsys, [*base, "--task", yn, "--method", "fo", "--head-lr", "1e-3",
                                             "--out", str(tmp_path / "b")])
    assert "frozen; use --peft lora" in bad(capsys, [*base, "--task", yn, "--peft", "norms", "--head-lr", "1e-3",
                                                     "--out", str(tmp_path / "c")])
    assert "--head-lr" in bad(capsys, [*base, "--task", yn, "--head-lr", "-1", "--out", str(tmp_path / "e")])
    for name in "abce":
        assert not (tmp_path / name).exists()


def test_the_head_step_runs_data_parallel_in_batch_mode_only():
    """In directions mode the ranks make different passes, so there is no shared batch to read the head rows from:
    refused in one line. Batch mode passes (tests/test_distributed.py runs it against one process)."""
    from finetune.common.errors import ZotuneError
    from finetune.trainer import check_parallel

    with pytest.raises(ZotuneError, match="runs data-parallel in --dp-mode batch only; use --dp-mode batch"):
        check_parallel(FinetuneConfig(head_lr=1e-3), opt=None, dp=FakeGroup("directions"))
    check_parallel(FinetuneConfig(head_lr=1e-3), opt=None, dp=FakeGroup("batch"))


def test_head_gradient_by_hand():
    h = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    logits = torch.zeros(2, 5)
    logits[0, 3] = 1.0
    g = head_gradient(h, logits, [[3, 4], [3, 4]], [0, 1])
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    assert torch.allclose(g[3], ((p[0] - 1) * h[0] + 0.5 * h[1]) / 2)
    assert torch.allclose(g[4], (p[1] * h[0] + (0.5 - 1) * h[1]) / 2)


def test_docs_head_step_python_example_runs(tmp_path):
    """docs/python-api.md: the first example's setup, then its head-step loop, on tiny-llama and a one-token task."""
    text = (ROOT / "docs" / "python-api.md").read_text()
    setup = text.split("```python", 1)[1].split("```", 1)[0].split("for step in", 1)[0]
    loop = text.split("With the head step", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = setup + loop
    task = _jsonl(tmp_path, one_token_examples(40))
    for old, new in [('"smollm2-135m"', '"tiny-llama"'), ('"bigbench:strategyqa"', repr(task)), ("range(100)", "range(3)")]:
        assert old in code, old
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "python-api.md", "exec"), scope)
    model, head = scope["model"], scope["head"]
    ids = _ids(scope["scorer"])
    start, _ = _tiny()
    moved = model.get_output_embeddings().weight.detach()[ids] - start.get_output_embeddings().weight.detach()[ids]
    assert head.steps == 3 and scope["opt"].engine.forwards == 6 and moved.abs().min() > 0


def _untied_llama():
    """A tiny Llama whose output head is its own matrix (not the input embedding), with the byte tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tied, tok = load_model("tiny-llama")
    cfg = LlamaConfig(**{**tied.config.to_dict(), "tie_word_embeddings": False})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    return model, TaskScorer(tok)


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_the_head_step_under_lora_moves_the_adapters_rows_as_on_the_full_model(untied):
    """Under --peft lora the option rows join the adapter (peft's trainable tokens). LoRA's B starts at zero, so
    the adapted model computes what the base does (to float rounding: peft's batched forward differs in the last
    bits); three head steps on it must then move the rows as on a copy of the full model, while the base weights
    stay as they were."""
    from finetune.data.adapters import AdapterSpec, apply_peft
    from finetune.head import head_rows, head_tokens

    make = _untied_llama if untied else _tiny
    full, scorer = make()
    lora_base, _ = make()
    ids = _ids(scorer)
    assert head_tokens(scorer, one_token_examples(20)) == sorted(ids)
    lora = apply_peft(lora_base, AdapterSpec(peft="lora"), seed=0, head_tokens=ids)
    frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    steps = [HeadStep(full, scorer, lr=1e-2), HeadStep(lora, scorer, lr=1e-2)]
    for k in range(3):
        batch = one_token_examples(4, seed=k)
        for model, step in zip((full, lora), steps):
            with torch.no_grad(), step.watching(batch):
                scorer.loss(model, batch)
            step.step()
    _, rows, row_of = head_rows(lora)
    moved = torch.stack([rows[row_of(t)] for t in ids]).detach()
    assert torch.allclose(moved, full.get_output_embeddings().weight.detach()[ids], rtol=1e-5, atol=1e-7)
    assert not torch.equal(moved, make()[0].get_output_embeddings().weight.detach()[ids])  # they did move
    assert all(torch.equal(p, frozen[n]) for n, p in lora.named_parameters() if not p.requires_grad)


def test_a_lora_run_with_the_head_step_saves_the_rows_in_its_adapter(tmp_path, capsys):
    """`finetune --peft lora --head-lr` (and --head-race): the saved adapter (peft's own format, loaded with peft
    and merged) holds the moved option rows; without a head step they stay as the base model has them."""
    from peft import PeftModel

    task = _jsonl(tmp_path, one_token_examples(60))
    argv = ["finetune", "--model", "tiny-llama", "--task", task, "--steps", "4", "--lr", "1e-3", "--peft", "lora",
            "--batch-size", "4", "--n-test", "8"]
    assert cli.main([*argv, "--head-lr", "1e-2", "--out", str(tmp_path / "head")]) == 0
    assert cli.main([*argv, "--head-race", "1e-3,1e-2", "--out", str(tmp_path / "race")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "plain")]) == 0
    scorer = _tiny()[1]
    ids = _ids(scorer)
    base_rows = load_model("tiny-llama")[0].get_output_embeddings().weight.detach()[ids]
    for name, moved in (("head", True), ("race", True), ("plain", False)):
        model = PeftModel.from_pretrained(load_model("tiny-llama")[0], str(tmp_path / name / "adapter")).eval()
        merged = model.merge_and_unload()
        rows = merged.get_output_embeddings().weight.detach()[ids]
        assert (not torch.equal(rows, base_rows)) == moved, name
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert (metrics["head_lr"] in (1e-3, 1e-2)) == moved
    capsys.readouterr()


def test_a_killed_lora_run_with_the_head_step_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    """The rows live in the adapter, so the adapter-sized snapshot carries them (and the head step's moments)."""
    from safetensors.torch import load_file

    task = _jsonl(tmp_path, one_token_examples(60))
    argv = ["finetune", "--model", "tiny-llama", "--task", task, "--steps", "6", "--lr", "1e-3", "--head-lr", "1e-2",
            "--peft", "lora", "--batch-size", "4", "--n-test", "8", "--eval-every", "2", "--snapshot-every", "3"]
    out = _straight_and_resumed(tmp_path, monkeypatch, capsys, argv)
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and any("trainable_tokens" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adam_direction_is_the_bias_corrected_formula_bit_for_bit():
    """adam_direction updates its moments in place (the top-block step's matrices are megabytes each); its values are
    the out-of-place formula's bit for bit, step after step, and the gradient it is given is left as it was."""
    from finetune.head import adam_direction

    gen = torch.Generator().manual_seed(0)
    moments, b1, b2, eps = {}, 0.9, 0.999, 1e-8
    m = v = torch.zeros(50, 7)
    for steps in range(1, 5):
        g = torch.randn(50, 7, generator=gen)
        kept = g.clone()
        d = adam_direction(moments, "w", g, steps, (b1, b2), eps)
        m, v = m * b1 + g * (1 - b1), v * b2 + g * g * (1 - b2)
        assert torch.equal(d, (m / (1 - b1 ** steps)) / ((v / (1 - b2 ** steps)).sqrt() + eps))
        assert torch.equal(moments["w"][0], m) and torch.equal(moments["w"][1], v) and torch.equal(g, kept)
