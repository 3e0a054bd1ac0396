"""Tests for pertnn: blocks/fingerprints on the tiny models, features, and the batched PertNN bank."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from finetune.data.models import load_model
from checkpoints.artifact import block_stats
from finetune.zo.engine import ZOEngine
from pertnn.blocks import trainable_tensors as param_blocks
from pertnn import (
    N_FEATURES,
    FeatureConfig,
    PertNNBank,
    PertNNConfig,
    block_features,
    fingerprint,
    fingerprint_mismatch,
    model_blocks,
    tensor_var_mean,
    tied_groups,
)

TINY = ["tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2"]
_CACHE: dict = {}


def tiny(name, seed=0):
    if (name, seed) not in _CACHE:
        _CACHE[(name, seed)] = load_model(name, seed=seed)[0]
    return _CACHE[(name, seed)]


# ----------------------------------------------------------------------------------------------- blocks

@pytest.mark.parametrize("name", TINY)
def test_blocks_match_param_blocks(name):
    model = tiny(name)
    blocks = model_blocks(model)
    assert len(blocks) == len(list(model.parameters()))
    ref = param_blocks(model)
    # the engine, the features' block statistics and the artifact use this one enumeration, in this order
    engine = ZOEngine(model)
    assert [n for n, _ in engine.blocks] == [n for n, _ in ref] and all(a is b for (_, a), (_, b) in zip(engine.blocks, ref))
    stats = block_stats(model)
    assert stats.shape[0] == len(ref)
    assert torch.allclose(stats[:, 0], torch.stack([p.detach().float().mean() for _, p in ref]), atol=1e-6)
    # an independent reference: named_parameters with requires_grad, deduplicated by tensor identity
    seen, names = set(), []
    for n, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            names.append(n)
    assert [n for n, _ in ref] == names
    assert [b.name for b in blocks] == [n for n, _ in ref]
    assert [b.shape for b in blocks] == [tuple(p.shape) for _, p in ref]
    assert [b.numel for b in blocks] == [p.numel() for _, p in ref]
    emb = model.get_input_embeddings().weight
    tok = [b for b, (_, p) in zip(blocks, ref) if p is emb]
    assert len(tok) == 1 and tok[0].kind == "embedding"
    assert model.get_output_embeddings().weight is emb  # tied: the head is not a block of its own
    for b, (_, p) in zip(blocks, ref):
        if p.ndim == 1:
            assert b.kind == "vector"
        elif p is not emb and b.kind != "embedding":
            assert b.kind == "matrix"


@pytest.mark.parametrize("name,expected", [
    ("tiny-llama", ["model.embed_tokens.weight"]),
    ("tiny-qwen2", ["model.embed_tokens.weight"]),
    # positional tables are nn.Embedding (GPT-2) or a subclass of it (OPT): both count as "embedding"
    ("tiny-opt", ["model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"]),
    ("tiny-gpt2", ["transformer.wte.weight", "transformer.wpe.weight"]),
])
def test_embedding_blocks(name, expected):
    assert [b.name for b in model_blocks(tiny(name)) if b.kind == "embedding"] == expected


def test_gpt2_layer_norms_are_vectors():
    kinds = {b.name: b.kind for b in model_blocks(tiny("tiny-gpt2"))}
    assert kinds["transformer.ln_f.weight"] == "vector" and kinds["transformer.h.0.ln_1.weight"] == "vector"
    assert kinds["transformer.h.0.attn.c_attn.weight"] == "matrix"  # Conv1D, not a Linear


class _Odd(nn.Module):
    """Names chosen to fool substring rules: 'norm' on a matrix, 'embed'/'bias' elsewhere."""

    def __init__(self):
        super().__init__()
        self.norm_proj = nn.Linear(4, 3)             # matrix + vector despite 'norm'
        self.lookup = nn.Embedding(7, 4)             # embedding without 'embed' in the name
        self.embed_bias = nn.Parameter(torch.zeros(5))   # vector despite 'embed'
        self.bias_kernel = nn.Parameter(torch.zeros(2, 3, 4))  # 3-D: matrix despite 'bias'
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.lookup.weight        # tie, registered later under another name
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)


def test_kinds_by_identity_not_name():
    m = _Odd()
    kinds = {b.name: b.kind for b in model_blocks(m)}
    assert kinds == {"norm_proj.weight": "matrix", "norm_proj.bias": "vector", "lookup.weight": "embedding",
                     "embed_bias": "vector", "bias_kernel": "matrix"}
    assert [b.name for b in model_blocks(m)] == [n for n, _ in param_blocks(m)]
    assert tied_groups(m) == [["lookup.weight", "head.weight"]]


def test_renamed_embedding_module_still_embedding():
    model = load_model("tiny-llama")[0]
    inner = model.model
    emb = inner.embed_tokens
    del inner.embed_tokens
    inner.add_module("token_table", emb)
    kinds = {b.name: b.kind for b in model_blocks(model)}
    assert kinds["model.token_table.weight"] == "embedding"
    assert sum(k == "embedding" for k in kinds.values()) == 1


@pytest.mark.parametrize("name", TINY)
def test_tied_groups(name):
    model = tiny(name)
    groups = tied_groups(model)
    assert len(groups) == 1 and groups[0][-1] == "lm_head.weight" and len(groups[0]) == 2
    assert "embed_tokens" in groups[0][0] or "wte" in groups[0][0]


def test_fingerprint_seed_independent_and_json():
    a, b = fingerprint(tiny("tiny-llama", 0)), fingerprint(tiny("tiny-llama", 1))
    assert a == b and fingerprint_mismatch(a, b) == []
    assert json.loads(json.dumps(a)) == a


def test_fingerprint_mismatch_across_architectures():
    a, b = fingerprint(tiny("tiny-llama")), fingerprint(tiny("tiny-qwen2"))
    problems = fingerprint_mismatch(a, b)
    assert 0 < len(problems) <= 6
    # Qwen2 has q/k/v biases that Llama lacks: the first difference names the first one
    assert "extra block" in problems[0] and "model.layers.0.self_attn.q_proj.bias" in problems[0]
    back = fingerprint_mismatch(b, a)
    assert "missing block" in back[0] and "q_proj.bias" in back[0]


def test_fingerprint_mismatch_shape_and_tying():
    model = load_model("tiny-llama")[0]
    ref = fingerprint(model)
    old = model.model.layers[1].mlp.up_proj
    model.model.layers[1].mlp.up_proj = nn.Linear(old.in_features, old.out_features + 8, bias=False)
    problems = fingerprint_mismatch(ref, fingerprint(model))
    assert len(problems) == 1 and "model.layers.1.mlp.up_proj.weight" in problems[0] and "shape" in problems[0]
    model.model.layers[1].mlp.up_proj = old
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())  # untie
    problems = fingerprint_mismatch(ref, fingerprint(model))
    assert any("extra block" in p and "lm_head.weight" in p for p in problems)
    assert any("tying differs" in p for p in problems)


# --------------------------------------------------------------------------------------------- features

def test_features_shape_finite_and_values():
    params = [p for _, p in param_blocks(tiny("tiny-llama"))]
    prev = torch.rand(len(params), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    x = block_features(params, (2.0, 1.5), 2.5, prev)
    assert x.shape == (len(params), N_FEATURES) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    p = params[1].detach().double()
    assert x[1, 0].item() == pytest.approx(p.mean().item(), rel=1e-5, abs=1e-7)
    assert x[1, 1].item() == pytest.approx(torch.log(p.var(correction=0) + 1e-12).item(), rel=1e-5)
    assert torch.allclose(x[:, 2], torch.full_like(x[:, 2], 0.5 / 2.5))
    assert torch.allclose(x[:, 3], torch.full_like(x[:, 3], 1.75 / 2.5 - 1))
    # float32 log of a float32 scale: within float32 rounding of the float64 log (absolute near log 1 = 0)
    assert torch.allclose(x[:, 4], prev.log().float(), rtol=1e-6, atol=1e-6)
    # constant tensors (fresh norm weights of ones) give a finite log-variance
    ones = [torch.ones(8)]
    x1 = block_features(ones, None, None, torch.ones(1))
    assert torch.isfinite(x1).all() and x1[0, 1].item() == pytest.approx(torch.log(torch.tensor(1e-12)).item())
    x2 = block_features(ones, None, None, torch.zeros(1), FeatureConfig(var_eps=1e-6, scale_floor=1e-3))
    assert x2[0, 1].item() == pytest.approx(torch.log(torch.tensor(1e-6)).item())
    assert x2[0, 4].item() == pytest.approx(torch.log(torch.tensor(1e-3)).item())


def test_features_before_first_step_and_scale_invariance():
    params = [p for _, p in param_blocks(tiny("tiny-qwen2"))]
    prev = torch.ones(len(params))
    x0 = block_features(params, None, None, prev)
    assert (x0[:, 2:] == 0).all()
    assert (block_features(params, (1.0, 2.0), 0.0, prev)[:, 2:4] == 0).all()  # no usable normaliser
    x1 = block_features(params, (1.3, 1.1), 1.25, prev)
    x10 = block_features(params, (13.0, 11.0), 12.5, prev)
    assert torch.allclose(x1, x10, rtol=1e-6, atol=1e-7)
    assert (x1[:, 2:4] != 0).all()


def test_var_mean_chunked_low_precision():
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(37, 29, generator=g) * 0.02 + 0.3).to(torch.bfloat16)
    var, mean = tensor_var_mean(t, chunk=100)
    ref = t.double()
    assert var.dtype == torch.float32
    assert var.item() == pytest.approx(ref.var(correction=0).item(), rel=1e-5)
    assert mean.item() == pytest.approx(ref.mean().item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------- bank

def _random_bank(numels, cfg, seed=0, dtype=torch.float32):
    bank = PertNNBank(numels, cfg, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return bank


def test_bank_equals_per_block_sequential_loop():
    numels = [259 * 64, 64, 4096, 64, 1000]
    cfg = PertNNConfig(hidden=16, energy_norm=False, init_scale=0.7)
    bank = _random_bank(numels, cfg)
    x = torch.randn(len(numels), N_FEATURES, generator=torch.Generator().manual_seed(3))
    ref_out, ref_sigma = [], []
    for b in range(len(numels)):
        seq = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
        with torch.no_grad():
            seq[0].weight.copy_(bank.W1[b]); seq[0].bias.copy_(bank.b1[b])
            seq[2].weight.copy_(bank.W2[b]); seq[2].bias.copy_(bank.b2[b])
            out = seq(x[b]).squeeze()
        ref_out.append(out)
        ref_sigma.append(F.softplus(out.double() + torch.log(torch.expm1(torch.tensor(0.7, dtype=torch.float64)))))
    ref_out, ref_sigma = torch.stack(ref_out), torch.stack(ref_sigma)
    assert torch.allclose(bank.mlp_out(x).detach(), ref_out, atol=1e-6, rtol=0)
    assert torch.allclose(bank.scales(x), ref_sigma, atol=1e-6, rtol=0)
    # energy normalisation reference, written independently
    bank.cfg.energy_norm = True
    n = torch.tensor(numels, dtype=torch.float64)
    ref_norm = ref_sigma * torch.sqrt(n.sum() / (n * ref_sigma ** 2).sum())
    assert torch.allclose(bank.scales(x), ref_norm, atol=1e-6, rtol=0)


def test_bank_has_no_python_loop_shape_contract():
    bank = PertNNBank([3, 4], PertNNConfig(hidden=8))
    assert bank.W1.shape == (2, 8, 5) and bank.b1.shape == (2, 8)
    assert bank.W2.shape == (2, 1, 8) and bank.b2.shape == (2, 1)
    with pytest.raises(ValueError):
        bank(torch.zeros(3, 5))


@pytest.mark.parametrize("init_scale", [1.0, 0.3, 2.5])
def test_untrained_bank_is_mezo(init_scale):
    model = tiny("tiny-opt")
    blocks = model_blocks(model)
    params = [p for _, p in param_blocks(model)]
    bank = PertNNBank([b.numel for b in blocks], PertNNConfig(init_scale=init_scale),
                      generator=torch.Generator().manual_seed(1))
    x = block_features(params, (2.0, 1.0), 1.7, torch.rand(len(params)) + 0.1)
    s = bank.scales(x)
    assert s.dtype == torch.float64 and s.device.type == "cpu"
    assert (s == 1.0).all()
    raw = PertNNBank([b.numel for b in blocks], PertNNConfig(init_scale=init_scale, energy_norm=False))
    assert torch.allclose(raw.scales(x), torch.full((len(blocks),), init_scale, dtype=torch.float64))
    assert torch.unique(raw.scales(x)).numel() == 1  # exactly equal across blocks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_norm_random_banks(seed):
    numels = [259 * 64, 64, 64, 4096, 11008 * 4096, 7]
    bank = _random_bank(numels, PertNNConfig(hidden=12), seed=seed)
    x = torch.randn(len(numels), N_FEATURES, generator=torch.Generator().manual_seed(seed + 10))
    s = bank.scales(x)
    n = torch.tensor(numels, dtype=torch.float64)
    assert (s > 0).all() and torch.unique(s).numel() > 1
    assert (n * s * s).sum().item() == pytest.approx(n.sum().item(), rel=1e-12)


def test_gradient_reaches_all_parameters_and_matches_finite_difference():
    numels = [100, 20, 3000, 5]
    bank = _random_bank(numels, PertNNConfig(hidden=6), seed=4, dtype=torch.float64)
    x = torch.randn(4, N_FEATURES, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = torch.randn(4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def objective():
        return (w * bank(x)).sum()

    objective().backward()
    for name, p in bank.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad.abs().sum(dim=tuple(range(1, p.ndim))) > 0).all(), name  # every block's MLP
    for p, idx in [(bank.W1, (2, 3, 1)), (bank.b2, (1, 0))]:
        h = 1e-6
        with torch.no_grad():
            p[idx] += h
            up = objective().item()
            p[idx] -= 2 * h
            down = objective().item()
            p[idx] += h
        fd = (up - down) / (2 * h)
        assert p.grad[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_fresh_bank_gradient_only_in_last_layer():
    bank = PertNNBank([10, 20, 30], PertNNConfig(hidden=4))
    x = torch.randn(3, N_FEATURES)
    (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * bank(x)).sum().backward()
    assert (bank.W1.grad == 0).all() and (bank.b1.grad == 0).all()
    assert bank.W2.grad.abs().sum() > 0 and bank.b2.grad.abs().sum() > 0


def test_step_history_refreshes_block_statistics_every_n_steps(monkeypatch):
    """StepHistory recomputes the block statistics on steps 1, 1 + n, 1 + 2n, ... and after refresh_stats();
    in between, its features equal block_features at the cached statistics; its state carries the cache."""
    from pertnn import features as feats
    from pertnn import StepHistory

    model = tiny("tiny-llama")
    params = [p for _, p in param_blocks(model)]
    reference = block_features(params, None, None, torch.ones(len(params)))
    calls = []
    real = feats.param_stats
    monkeypatch.setattr(feats, "param_stats", lambda ps, cfg=None: calls.append(1) or real(ps, cfg))
    hist = StepHistory(len(params), FeatureConfig(stats_every=3))
    first = hist.features(params)
    assert torch.equal(first, reference)
    with torch.no_grad():
        params[1].add_(1.0)  # a big move: visible in the mean of block 1 once the statistics are refreshed
    try:
        seen = [hist.features(params)[1, 0].item() for _ in range(3)]  # steps 2, 3 (cached), 4 (refreshed)
        assert len(calls) == 2 and seen[0] == seen[1] == first[1, 0].item() != seen[2]
        state = hist.state_dict()
        hist.refresh_stats()
        hist.features(params)
        assert len(calls) == 3
        other = StepHistory(len(params), FeatureConfig(stats_every=3))
        other.load_state_dict(state)
        got = other.features(params)
        assert len(calls) == 3  # the loaded cache was used, not recomputed
        assert torch.equal(got, block_features(params, None, None, torch.ones(len(params)), var_mean=state["var_mean"]))
    finally:
        with torch.no_grad():
            params[1].sub_(1.0)
    with pytest.raises(ValueError, match="stats_every"):
        FeatureConfig(stats_every=0)
