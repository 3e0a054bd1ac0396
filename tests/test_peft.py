"""ZO fine-tuning of adapters (--peft lora/prefix/norms) against independent references, on the four tiny
architectures: an explicit step with materialised noise and functional_call, the frozen base weights
bit for bit, the adapter's save/load round trip through peft, resuming, and tuners for adapters."""
import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cli
from checkpoints import Tuner
from checkpoints.inspect import inspect_text
from finetune.common.errors import ZotuneError
from finetune.data.adapters import AdapterSpec, apply_peft, load_trained, save_trained
from finetune.data.models import TINY, load_model
from finetune.data.scoring import TaskScorer
from finetune.trainer import METHODS, FinetuneConfig, make_run_optimizer
from finetune.zo.optim import TunedZO, ZOAdam, ZOSGD
from reference import Reference, axpy, bad, deep_tiny, ids, kill_at_call, seed_stream, synthetic_examples

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("lora", "prefix", "norms")


def adapted(name, kind, layers=None, **options):
    """A tiny model of family ``name`` (with ``layers`` layers) with adapter ``kind``; LoRA's B is made
    non-zero so that the A tensors matter to the loss."""
    base = load_model(name)[0] if layers is None else deep_tiny(name, layers)
    model = apply_peft(base, AdapterSpec(peft=kind, **options), seed=0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def frozen_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize("layers", [None, 24])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", TINY)
def test_zo_step_on_an_adapter_matches_explicit_reference(name, kind, layers):
    """One ZOSGD step equals theta - lr * (L(theta + eps z) - L(theta - eps z)) / (2 eps) * z over the adapter's
    tensors, with z materialised and L evaluated by functional_call; the blocks are exactly the adapter's
    tensors, and every frozen weight is bit-identical afterwards. With 2 layers each adapter tensor is
    perturbed on its own; with 24, a layer's adapter tensors are swapped together (a unit)."""
    model = adapted(name, kind, layers)
    frozen = frozen_of(model)
    lr, eps = 1e-2, 1e-2
    opt = ZOSGD(model, lr=lr, eps=eps, seed=11)
    engine = opt.engine
    names = [n for n, _ in engine.blocks]
    assert names == trainable_names(model) and len(names) < len(list(model.parameters()))
    if kind == "lora":
        n_layers = layers or 2
        per_layer = 1 if name == "tiny-gpt2" else 2  # c_attn, or q_proj and v_proj
        assert len(names) == 2 * per_layer * n_layers and all(".lora_A." in n or ".lora_B." in n for n in names)
    elif kind == "prefix":
        assert names == ["prompt_encoder.default.embedding.weight"]
        assert [m for m, _ in engine._lookups] == [model.prompt_encoder["default"].embedding]
    else:
        assert all(p.ndim == 1 for _, p in engine.blocks)
        assert all(p.ndim >= 2 for p in frozen.values())
    if layers and kind != "prefix":
        layer_units = [m for m, _ in engine._owners if type(m).__name__.endswith(("DecoderLayer", "Block"))]
        assert len(layer_units) == layers
    ref = Reference(model, engine, ids())
    seed = next(seed_stream(11))
    theta, z = ref.theta(), ref.z(seed)
    g = (ref.loss(axpy(eps, z, theta)) - ref.loss(axpy(-eps, z, theta))) / (2 * eps)
    opt.step(ref.closure())
    assert abs(g) > 1e-4  # the step is not trivial
    assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
    g_used = opt.last["projected_grad"]
    for n, p in engine.blocks:
        torch.testing.assert_close(p.detach(), theta[n] - lr * g_used * z[n], rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n
    # memory: the perturbed copies are adapter tensors, together at most the adapter's size
    pooled = [b for bufs in engine._pool.values() for b in bufs]
    assert {tuple(b.shape) for b in pooled} <= {tuple(p.shape) for _, p in engine.blocks}
    assert sum(b.numel() for b in pooled) <= sum(p.numel() for _, p in engine.blocks)


def guard_frozen(model):
    """Pre-hooks that fail if any module runs with a frozen parameter that is not its original tensor and values."""
    original = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if not p.requires_grad:
                original[id(p)] = (p.data_ptr(), p.detach().clone())
    calls = {"n": 0}

    def check(module, args):
        for p in module.parameters(recurse=False):
            if not p.requires_grad:
                ptr, value = original[id(p)]
                assert p.data_ptr() == ptr and torch.equal(p, value), type(module).__name__
                calls["n"] += 1

    handles = [m.register_forward_pre_hook(check) for m in model.modules()]
    return handles, calls


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", TINY)
def test_base_weights_come_back_bit_for_bit(name, kind):
    """Ten ZO-Adam steps (a stateful update) move the adapter, and the frozen weights are the same tensors
    with the same values in every perturbed forward pass and after."""
    model = adapted(name, kind)
    frozen, before = frozen_of(model), {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    handles, calls = guard_frozen(model)
    opt = ZOAdam(model, lr=1e-2, eps=1e-2, seed=3)
    x = ids()
    for _ in range(10):
        opt.step(lambda: model(input_ids=x, labels=x).loss)
    for h in handles:
        h.remove()
    assert calls["n"] > 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, frozen[n]), n


@pytest.mark.parametrize("method", [m for m in METHODS if m != "exact"])
def test_every_method_moves_only_the_adapter(method):
    """Every --method on a LoRA model: the LoRA tensors move, nothing frozen is ever changed (also inside
    the perturbed passes). Not exact, whose optimizer moves nothing by design (tests/test_exact.py)."""
    model = adapted("tiny-qwen2", "lora")
    frozen = frozen_of(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = FinetuneConfig(model="tiny-qwen2", method=method, lr=1e-2, eps=1e-2, peft="lora",
                         tuner="fresh" if method == "tuner" else None)
    tuner = Tuner.for_model(model, "tiny-qwen2") if method == "tuner" else None
    opt = make_run_optimizer(cfg, model, tuner)
    handles, calls = guard_frozen(model)
    x = ids()
    for _ in range(3):
        opt.step(lambda: model(input_ids=x, labels=x).loss)
    for h in handles:
        h.remove()
    assert calls["n"] > 0
    moved = [n for n in before if not torch.equal(model.get_parameter(n), before[n])]
    assert moved, method
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", TINY)
def test_adapter_round_trip(tmp_path, name, kind):
    """What a run saves, loaded onto a fresh base model (PeftModel.from_pretrained for lora and prefix),
    gives the fine-tuned model's logits exactly; the merged model (lora, norms) gives them to rounding."""
    model, tokenizer = load_model(name)
    model = apply_peft(model, AdapterSpec(peft=kind), seed=0)
    opt = ZOSGD(model, lr=5e-2, eps=1e-2, seed=1)
    x = ids()
    for _ in range(4):
        opt.step(lambda: model(input_ids=x, labels=x).loss)
    want = logits(model, x)
    path = save_trained(model, tokenizer, tmp_path)
    assert path == tmp_path / "adapter" and not (tmp_path / "model").exists()
    base = load_model(name)[0]
    assert not torch.allclose(logits(base, x), want)  # the adapter matters
    if kind == "norms":
        assert sorted(p.name for p in path.iterdir() if p.suffix == ".safetensors") == ["norms.safetensors"]
        loaded = load_trained(base, path)
    else:
        assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
        loaded = PeftModel.from_pretrained(base, str(path))
    torch.testing.assert_close(logits(loaded, x), want, rtol=0, atol=0)
    if kind != "prefix":
        merged_path = save_trained(model, tokenizer, tmp_path / "merged", merge=True)
        assert merged_path == tmp_path / "merged" / "model"
        merged, _ = load_model(str(merged_path))
        assert not any(".lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(logits(merged, x), want, rtol=1e-5, atol=1e-5)


def test_cli_finetune_lora_writes_the_adapter_and_merge_writes_the_model(tmp_path, jsonl):
    argv = ["finetune", "--model", "tiny-gpt2", "--task", str(jsonl), "--steps", "4", "--lr", "5e-2",
            "--batch-size", "4", "--n-test", "8", "--peft", "lora", "--lora-r", "4"]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter", "metrics.json"]
    config = json.loads((tmp_path / "a" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["c_attn"] and config["lora_dropout"] == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["config"]["peft"] == "lora" and metrics["forwards"] == 8
    assert cli.main([*argv, "--merge", "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["metrics.json", "model"]
    a = PeftModel.from_pretrained(load_model("tiny-gpt2")[0], str(tmp_path / "a" / "adapter"))
    b, _ = load_model(str(tmp_path / "b" / "model"))
    x = ids()
    torch.testing.assert_close(logits(b, x), logits(a, x), rtol=1e-5, atol=1e-5)


def test_killed_lora_run_resumes_to_the_same_adapter(tmp_path, jsonl, monkeypatch, capsys):
    argv = ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "7", "--lr", "5e-2",
            "--batch-size", "4", "--n-test", "8", "--checkpoint-every", "3", "--optimizer", "momentum",
            "--peft", "lora"]
    assert cli.main(argv + ["--out", str(tmp_path / "straight")]) == 0
    real_loss = kill_at_call(monkeypatch, 9)  # killed in step 5's first forward pass: the checkpoint of step 3 survives
    out = tmp_path / "resumed"
    with pytest.raises(SystemExit):
        cli.main(argv + ["--out", str(out)])
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    capsys.readouterr()
    # the snapshot is adapter-sized: the LoRA tensors and the optimizer's momentum for them, nothing frozen
    state = torch.load(tmp_path / ".resumed.partial" / "snapshot.pt", weights_only=True)
    assert sorted(state["model"]) == sorted(trainable_names(apply_peft(load_model("tiny-llama")[0],
                                                                       AdapterSpec(peft="lora"))))
    assert "lora_r=8" in bad(capsys, [*argv, "--lora-r", "4", "--out", str(out), "--resume"])
    assert cli.main(argv + ["--out", str(out), "--resume"]) == 0
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and len(a) == 8
    for k in a:
        assert torch.equal(a[k], b[k]), k
    start = apply_peft(load_model("tiny-llama")[0], AdapterSpec(peft="lora"), seed=0)
    assert any(not torch.equal(v, start.get_parameter(k.replace(".weight", ".default.weight"))) for k, v in a.items())
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert ma["train_loss"] == mb["train_loss"] and ma["eval"] == mb["eval"]


@pytest.mark.parametrize("name", TINY)
def test_a_tuner_for_another_adapter_is_refused(name):
    lora = apply_peft(load_model(name)[0], AdapterSpec(peft="lora"), seed=0)
    tuner = Tuner.for_model(lora, name)
    r = 8
    assert tuner.adapter["method"] == "lora" and tuner.adapter["r"] == r and tuner.adapter["alpha"] == 2 * r
    tuner.check_model(apply_peft(load_model(name)[0], AdapterSpec(peft="lora"), seed=1))  # other weights: fine
    TunedZO(lora, tuner, lr=1e-3)
    cases = [(AdapterSpec(peft="lora", lora_r=4), "r expected 8, got 4"),
             (AdapterSpec(peft="lora", lora_alpha=8), "alpha expected 16.0, got 8.0"),  # same shapes
             (AdapterSpec(peft="prefix"), "got prefix tuning"), (AdapterSpec(peft="norms"), "got norm weights"),
             (AdapterSpec(), "got the full model")]
    for spec, difference in cases:
        other = apply_peft(load_model(name)[0], spec, seed=0)
        with pytest.raises(ZotuneError) as exc:
            TunedZO(other, tuner, lr=1e-3)
        message = str(exc.value)
        assert difference in message and "\n" not in message and "--peft lora --lora-r 8 --lora-alpha 16" in message
    full = Tuner.for_model(load_model(name)[0], name)
    with pytest.raises(ZotuneError, match="expected the full model"):
        full.check_model(lora)


def test_an_older_artifact_means_the_full_model(tmp_path):
    model = load_model("tiny-opt")[0]
    path = Tuner.for_model(model, "tiny-opt").save_pretrained(tmp_path / "t.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["zotune"])
    assert meta["adapter"] is None
    del meta["adapter"]  # as written before adapters existed
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**header, "zotune": json.dumps(meta)})
    old = Tuner.from_pretrained(tmp_path / "old.safetensors")
    assert old.adapter is None and old.fingerprint["adapter"] is None
    old.check_model(model)
    with pytest.raises(ZotuneError, match="expected the full model"):
        old.check_model(apply_peft(load_model("tiny-opt")[0], AdapterSpec(peft="norms")))
    assert "adapter    the full model" in inspect_text(tmp_path / "old.safetensors")
    # an adapter artifact whose adapter metadata is edited no longer matches its fingerprint hash
    lora = Tuner.for_model(apply_peft(load_model("tiny-opt")[0], AdapterSpec(peft="lora")), "tiny-opt")
    lora.save_pretrained(tmp_path / "lora.safetensors")
    with safe_open(str(tmp_path / "lora.safetensors"), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["zotune"])
    meta["adapter"]["alpha"] = 32.0
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata={**header, "zotune": json.dumps(meta)})
    with pytest.raises(ZotuneError, match="fingerprint hash"):
        Tuner.from_pretrained(tmp_path / "edited.safetensors")


def test_meta_train_for_lora_records_the_adapter_and_fine_tunes_with_it(tmp_path, tasks, jsonl, capsys):
    out = tmp_path / "lora.safetensors"
    assert cli.main(["meta-train", "--model", "tiny-llama", "--tasks", ",".join(tasks), "--steps", "3",
                     "--batch-size", "4", "--peft", "lora", "--lora-r", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    tuner = Tuner.from_pretrained(out)
    assert tuner.adapter == {"method": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
    assert len(tuner.blocks) == 8 and all(".lora_" in b["name"] for b in tuner.blocks)
    assert "adapter    LoRA r=4 alpha=8 dropout=0 targets q_proj,v_proj" in inspect_text(out)
    argv = ["finetune", "--tuner", str(out), "--task", str(jsonl), "--steps", "2", "--batch-size", "4",
            "--n-test", "8", "--peft", "lora"]
    err = bad(capsys, [*argv, "--out", str(tmp_path / "a")])
    assert "r expected 4, got 8" in err and "--lora-r 4" in err and not (tmp_path / "a").exists()
    assert cli.main([*argv, "--lora-r", "4", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("kind", ["norms", "lora"])
def test_bench_accepts_peft(tmp_path, jsonl, kind):
    """bench --peft: every run starts from the same adapter. Seed 0 runs after seed 1, and equals a fresh
    fine-tune run with seed 0, for mezo and ldsd."""
    common = ["--model", "tiny-opt", "--task", str(jsonl), "--batch-size", "4", "--n-test", "8", "--peft", kind,
              "--lr", "5e-2"]
    out = tmp_path / "bench"
    assert cli.main(["bench", *common, "--methods", "mezo,ldsd", "--seeds", "1,0", "--forwards", "10",
                     "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["config"]["base"]["peft"] == kind and len(report["runs"]) == 4
    for method, steps in (("mezo", 5), ("ldsd", 2)):
        assert cli.main(["finetune", *common, "--method", method, "--steps", str(steps), "--no-save-model",
                         "--out", str(tmp_path / method)]) == 0
        alone = json.loads((tmp_path / method / "metrics.json").read_text())
        run = [r for r in report["runs"] if r["method"] == method and r["seed"] == 0]
        assert run and run[0]["train_loss"] == alone["train_loss"], method


@pytest.mark.parametrize("argv,message", [
    (["--lora-r", "4"], "--lora-r applies to --peft lora"),
    (["--peft", "lora", "--prefix-tokens", "4"], "--prefix-tokens applies to --peft prefix"),
    (["--peft", "lora", "--lora-dropout", "0.1"], "--lora-dropout must be 0 for ZO"),
    (["--peft", "lora", "--lora-targets", "nothing_here"], "cannot build the lora adapter"),
    (["--peft", "prefix", "--merge"], "--merge applies to --peft lora or norms"),
    (["--merge"], "--merge applies to --peft lora or norms"),
])
def test_adapter_mistakes_give_one_line_errors(tmp_path, capsys, jsonl, argv, message):
    err = bad(capsys, ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "1", *argv,
                       "--out", str(tmp_path / "run")])
    assert message in err and not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


def test_meta_train_with_peft_needs_the_closed_form(tmp_path, tasks, capsys):
    err = bad(capsys, ["meta-train", "--model", "tiny-llama", "--tasks", ",".join(tasks), "--peft", "lora",
                       "--unroll", "2", "--out", str(tmp_path / "t.safetensors")])
    assert "--unroll 1" in err


def test_docs_python_example_runs(tmp_path, monkeypatch):
    """docs/peft.md's Python example, on a tiny model, a JSONL task and 3 steps instead of SmolLM2 and 100."""
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"input": e.prompt, "options": list(e.options), "label": e.label}) + "\n"
                            for e in synthetic_examples(40)))
    code = (ROOT / "docs" / "peft.md").read_text().split("```python", 1)[1].split("```", 1)[0]
    code = (code.replace('"smollm2-135m"', '"tiny-llama"').replace("range(100)", "range(3)")
            .replace('"bigbench:strategyqa"', repr(str(task))))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/peft.md", "exec"), scope)
    model, tuned = scope["model"], scope["tuned"]
    assert scope["opt"].engine.forwards == 6
    assert [n for n, _ in scope["opt"].engine.blocks] == trainable_names(model)
    assert all(".lora_" in n for n in trainable_names(model))
    x = ids()
    torch.testing.assert_close(logits(tuned, x), logits(model, x), rtol=0, atol=0)


def test_model_card_shows_the_adapter_and_its_flags():
    from checkpoints.hub import model_card

    lora = apply_peft(load_model("tiny-qwen2")[0], AdapterSpec(peft="lora", lora_targets="q_proj,k_proj"))
    card = model_card(Tuner.for_model(lora, "tiny-qwen2"), repo="me/t")
    assert "| adapter | LoRA r=8 alpha=16 dropout=0 targets k_proj,q_proj |" in card
    assert "--peft lora --lora-r 8 --lora-alpha 16 --lora-targets k_proj,q_proj --out" in card
    full = model_card(Tuner.for_model(load_model("tiny-qwen2")[0], "tiny-qwen2"), repo="me/t")
    assert "| adapter | the full model (no adapter) |" in full and "--peft" not in full


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", TINY)
def test_generation_tasks_see_the_adapter(name, kind):
    """Evaluation of generation tasks (batched, left-padded model.generate) gives each prompt's greedy
    continuation computed token by token on the adapted model, one unpadded prompt at a time. (Before peft 0.22
    transformers' cached generate dropped peft's prefix, so the scorer generates without the cache for prefix
    tuning there; from 0.22 on, with it: CI's fresh install gets the newest peft, a developer's may be older.)"""
    from finetune.data.tasks import Example

    model, tokenizer = load_model(name)
    model = apply_peft(model, AdapterSpec(peft=kind), seed=0)
    x = ids()
    opt = ZOSGD(model, lr=5e-2, eps=1e-2, seed=1)
    for _ in range(2):
        opt.step(lambda: model(input_ids=x, labels=x).loss)
    assert not torch.allclose(logits(load_model(name)[0], x), logits(model, x))  # the adapter matters
    n = 3
    scorer = TaskScorer(tokenizer, max_new_tokens=n)
    prompts = ["Q: what? A:", "Q: a longer one? A:"]
    want = []
    with torch.no_grad():
        for prompt in prompts:
            cur = torch.tensor([tokenizer(prompt)["input_ids"]])
            start = cur.shape[1]
            for _ in range(n):
                cur = torch.cat([cur, model(input_ids=cur).logits[:, -1].argmax(-1, keepdim=True)], 1)
            want.append(tokenizer.decode(cur[0, start:], skip_special_tokens=True).split("\n")[0].strip())
    assert scorer.generate(model, [Example(p, (), 0, answers=("x",)) for p in prompts]) == want


def test_zotrainer_trains_a_lora_model_and_saves_peft_checkpoints(tmp_path):
    """The transformers Trainer integration on a peft model: only the LoRA tensors move, and the Trainer's
    checkpoint is a peft adapter that PeftModel.from_pretrained loads to the trained model's logits."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    from finetune.hf_trainer import ZOTrainer

    model, tokenizer = load_model("tiny-llama", seed=1)
    model = apply_peft(model, AdapterSpec(peft="lora"), seed=0)
    frozen = frozen_of(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    words = ["apple", "stone", "river", "cloud", "green", "seven"]
    data = Dataset.from_dict({"text": [" ".join(words[(i + k) % 6] for k in range(3)) for i in range(8)]}).map(
        lambda row: tokenizer(row["text"]), remove_columns=["text"])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, learning_rate=5e-2,
                             max_steps=3, seed=3, use_cpu=True, report_to="none", disable_tqdm=True,
                             save_strategy="steps", save_steps=3, dataloader_num_workers=0)
    ZOTrainer(model=model, args=args, train_dataset=data,
              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    saved = tmp_path / "out" / "checkpoint-3"
    assert (saved / "adapter_config.json").is_file() and not (saved / "model.safetensors").exists()
    loaded = PeftModel.from_pretrained(load_model("tiny-llama", seed=1)[0], str(saved))
    x = ids()
    torch.testing.assert_close(logits(loaded, x), logits(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("kind,adapter", [("prefix", {"method": "prefix", "tokens": 10, "projection": False}),
                                          ("norms", {"method": "norms"})])
def test_meta_train_for_prefix_and_norms(tmp_path, tasks, kind, adapter):
    """Tuners for the other adapters: the bank has one MLP per adapter tensor, the artifact records the
    adapter, and a TunedZO step on a model with that adapter moves only the adapter."""
    from meta.train import MetaConfig, meta_train

    out = tmp_path / "t.safetensors"
    meta_train(MetaConfig(model="tiny-gpt2", tasks=tasks, steps=2, batch_size=4, peft=kind), out, progress=False)
    tuner = Tuner.from_pretrained(out)
    model = apply_peft(load_model("tiny-gpt2")[0], AdapterSpec(peft=kind), seed=0)
    assert tuner.adapter == adapter and [b["name"] for b in tuner.blocks] == trainable_names(model)
    frozen = frozen_of(model)
    opt = TunedZO(model, tuner, lr=1e-2, eps=1e-2)
    x = ids()
    opt.step(lambda: model(input_ids=x, labels=x).loss)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
