"""The tuner artifact: round trip, validation of bad files, architecture checks, and fine-tuning with it."""
from __future__ import annotations

import copy
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import Tuner
from checkpoints.inspect import inspect_text
from finetune.common.errors import ZotuneError
from finetune.data.models import load_model
from finetune.zo.optim import TunedZO, ZOSGD
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Example
from pertnn import PertNNConfig
from reference import assert_resumes_identically

BATCHES = [[Example(prompt=f"item {i + 4 * k} is", options=(" odd", " even"), label=(i + k) % 2) for i in range(4)]
           for k in range(3)]


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


def _trained_like(model, seed=3) -> Tuner:
    """A tuner whose bank has a random (non-zero) last layer: scales differ across blocks."""
    tuner = Tuner.for_model(model, "tiny-llama", PertNNConfig(hidden=8), seed=seed)
    tuner.bank.randomize_output_(torch.Generator().manual_seed(seed))
    tuner.provenance = {"meta_tasks": ["x.jsonl"], "steps": 3, "seed": seed}
    return tuner


def test_round_trip_keeps_tensors_metadata_and_scales(tmp_path, llama):
    model, _ = llama
    tuner = _trained_like(model)
    path = tuner.save_pretrained(tmp_path / "t.safetensors")
    back = Tuner.from_pretrained(path)
    for k in ("W1", "b1", "W2", "b2"):
        assert torch.equal(getattr(back.bank, k), getattr(tuner.bank, k))
    assert back.metadata() == json.loads(json.dumps(tuner.metadata()))
    first, rest = back.scales_at_rest()
    assert torch.equal(first, tuner.scales_at_rest()[0])
    assert float(first.min()) < 0.99 and float(first.max()) > 1.01  # heterogeneous, not MeZO
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_artifact_header_has_the_documented_fields(tmp_path, llama):
    model, _ = llama
    path = _trained_like(model).save_pretrained(tmp_path / "t.safetensors")
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + n])
    meta = header["__metadata__"]
    assert meta["format"] == "zotune-tuner" and meta["format_version"] == "1"
    doc = json.loads(meta["zotune"])
    for key in ("base_model", "blocks", "tied_groups", "fingerprint_sha256", "features", "pertnn",
                "direction_policy", "provenance", "recommended"):
        assert key in doc
    assert doc["direction_policy"] is None
    assert [b["name"] for b in doc["blocks"]] == [n for n, p in model.named_parameters()]
    assert sorted(k for k in header if k != "__metadata__") == ["base.block_stats", "pertnn.W1", "pertnn.W2",
                                                                 "pertnn.b1", "pertnn.b2"]


def test_truncated_corrupt_and_incomplete_files_give_clear_errors(tmp_path, llama):
    model, _ = llama
    good = _trained_like(model).save_pretrained(tmp_path / "good.safetensors")
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(ZotuneError, match="truncated or corrupt"):
        Tuner.from_pretrained(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 7)
    with pytest.raises(ZotuneError, match="not a readable safetensors"):
        Tuner.from_pretrained(garbage)

    with pytest.raises(ZotuneError, match="not found"):
        Tuner.from_pretrained(tmp_path / "absent.safetensors")

    tensors = load_file(str(good))
    n = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(data[8:8 + n])["__metadata__"]

    del_tensor = dict(tensors)
    del del_tensor["pertnn.W2"]
    save_file(del_tensor, str(tmp_path / "no_w2.safetensors"), metadata=meta)
    with pytest.raises(ZotuneError, match="tensor 'pertnn.W2' is missing"):
        Tuner.from_pretrained(tmp_path / "no_w2.safetensors")

    doc = json.loads(meta["zotune"])
    del doc["pertnn"]
    save_file(tensors, str(tmp_path / "no_key.safetensors"), metadata={**meta, "zotune": json.dumps(doc)})
    with pytest.raises(ZotuneError, match="metadata key 'pertnn' is missing"):
        Tuner.from_pretrained(tmp_path / "no_key.safetensors")

    save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ZotuneError, match="expected 'zotune-tuner'"):
        Tuner.from_pretrained(tmp_path / "plain.safetensors")

    doc = json.loads(meta["zotune"])
    doc["blocks"][1]["shape"] = [1, 1]
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata={**meta, "zotune": json.dumps(doc)})
    with pytest.raises(ZotuneError, match="fingerprint hash"):
        Tuner.from_pretrained(tmp_path / "edited.safetensors")

    bad = dict(tensors)
    bad["pertnn.b2"] = bad["pertnn.b2"].clone()
    bad["pertnn.b2"][0, 0] = float("nan")
    save_file(bad, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(ZotuneError, match="non-finite"):
        Tuner.from_pretrained(tmp_path / "nan.safetensors")

    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={**meta, "format_version": "99"})
    with pytest.raises(ZotuneError, match="upgrade zotune"):
        Tuner.from_pretrained(tmp_path / "future.safetensors")


def test_other_architecture_refused_naming_blocks_derivative_accepted(llama):
    model, _ = llama
    tuner = _trained_like(model)
    for other in ("tiny-qwen2", "tiny-opt", "tiny-gpt2"):
        with pytest.raises(ZotuneError, match="does not fit this model: (missing|extra) block #") as err:
            tuner.check_model(load_model(other)[0])
        assert "\n" not in str(err.value)
    qwen = load_model("tiny-qwen2")[0]
    with pytest.raises(ZotuneError, match="missing block #2 'model.layers.0.self_attn.q_proj.bias'"):
        Tuner.for_model(qwen, "tiny-qwen2").check_model(model)  # Qwen's q/k/v biases are blocks Llama lacks
    derivative = load_model("tiny-llama", seed=7)[0]  # same architecture, other weights
    assert not torch.equal(next(derivative.parameters()), next(model.parameters()))
    tuner.check_model(derivative)
    TunedZO(derivative, tuner, lr=1e-3)


def test_equal_scales_step_is_mezo_bit_for_bit(llama):
    """An untrained tuner (zero last layer, energy-normalised: every scale exactly 1) steps exactly as MeZO,
    over several steps in which its loss history changes."""
    model, tok = llama
    scorer = TaskScorer(tok, max_length=32)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    mezo = ZOSGD(a, lr=1e-2, eps=1e-3, seed=5)
    tuned = TunedZO(b, Tuner.for_model(model, "tiny-llama"), lr=1e-2, eps=1e-3, seed=5)
    for batch in BATCHES:
        la = mezo.step(lambda: scorer.loss(a, batch))
        lb = tuned.step(lambda: scorer.loss(b, batch))
        assert la == lb
        assert torch.equal(tuned.last["scales"], torch.ones(len(tuned.engine.blocks), dtype=torch.float64))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert tuned.history.losses is not None and tuned.history.running_loss is not None


def test_tuned_step_uses_the_banks_scales(llama):
    """With a heterogeneous bank, a step equals a MeZO step along the bank's σ."""
    model, tok = llama
    scorer = TaskScorer(tok, max_length=32)
    tuner = _trained_like(model)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    tuned = TunedZO(a, tuner, lr=1e-2, eps=1e-3, seed=9)
    ref = ZOSGD(b, lr=1e-2, eps=1e-3, seed=9)
    sigma = tuner.bank.scales(tuned.history.features(tuned.engine.params))
    tuned.step(lambda: scorer.loss(a, BATCHES[0]))
    ref.zo_step(lambda: scorer.loss(b, BATCHES[0]), scales=sigma)
    assert torch.equal(tuned.last["scales"], sigma) and not torch.allclose(sigma, torch.ones_like(sigma))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert tuned.history.prev_scale.tolist() == sigma.float().tolist()


def test_tuned_optimizer_state_round_trip_continues_identically(llama):
    model, tok = llama
    assert_resumes_identically(model, _trained_like(model), TaskScorer(tok, max_length=32), BATCHES[:2])


def test_inspect_summarises_scales(tmp_path, llama):
    model, _ = llama
    path = _trained_like(model).save_pretrained(tmp_path / "t.safetensors")
    text = inspect_text(path)
    assert "base model tiny-llama" in text and "meta-trained on x.jsonl: 3 steps" in text
    assert "model.layers.*.mlp.up_proj.weight" in text
    full = inspect_text(path, all_blocks=True)
    assert "model.layers.1.mlp.up_proj.weight" in full


def test_saved_artifact_has_a_normal_file_mode(tmp_path, llama):
    import os
    import stat

    model, _ = llama
    path = _trained_like(model).save_pretrained(tmp_path / "t.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
