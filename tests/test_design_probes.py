"""The tuner-v2 design probes in benchmarks/: their statistics against hand computations, and one end-to-end run
of the probe, the subspace measures and the static-allocation tuner file on a tiny model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from allocation_probe import candidates, normalise, predicted, set_stats  # noqa: E402


def test_signal_and_fisher_estimates_by_hand():
    gen = torch.Generator().manual_seed(0)
    quarters = [[0, 1, 2], [3, 4]]  # only the lengths matter
    sums = [[torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen)] for _ in range(2)]
    sq = [torch.tensor([2.0, 5.0], dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64)]
    S, F = set_stats(quarters, sums, sq, (0, 1))
    for b in range(2):  # <mean of quarter 0, mean of quarter 1> and the pooled mean squared norm
        ref = float((sums[0][b].double() / 3 * sums[1][b].double() / 2).sum())
        assert float(S[b]) == pytest.approx(ref, rel=1e-12)
        assert float(F[b]) == pytest.approx((float(sq[0][b]) + float(sq[1][b])) / 5, rel=1e-12)


def test_predicted_gain_and_step_by_hand():
    S = torch.tensor([4.0, 1.0], dtype=torch.float64)
    F = torch.tensor([10.0, 20.0], dtype=torch.float64)
    s2 = torch.tensor([2.0, 0.5], dtype=torch.float64)
    A = 2 * 4 + 0.5 * 1
    G = 2 * (4 + (10 - 4) / 8) + 0.5 * (1 + (20 - 1) / 8)
    T = 2 * 10 + 0.5 * 20
    out = predicted(s2, S, F, batch=8)
    assert out["A"] == pytest.approx(A) and out["C"] == pytest.approx(G * T)
    assert out["eta_star"] == pytest.approx(A / (G * T)) and out["gain"] == pytest.approx(A * A / (2 * G * T))
    assert predicted(s2, -S, F, batch=8)["eta_star"] is None  # no downhill step


def test_candidates_are_energy_normalised_and_mezo_is_ones():
    numels = torch.tensor([100.0, 10.0, 1000.0], dtype=torch.float64)
    S = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    F = torch.tensor([2.0, 1.0, 5.0], dtype=torch.float64)
    cands = candidates(S, F, numels)
    assert torch.equal(cands["mezo"], torch.ones(3, dtype=torch.float64))
    for name, s2 in cands.items():
        assert float((numels * s2).sum()) == pytest.approx(float(numels.sum()), rel=1e-12), name
        assert float(s2[1]) == (1.0 if name == "mezo" else 0.0), name  # no energy where the signal is negative
    assert torch.allclose(normalise(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), numels),
                          torch.ones(3, dtype=torch.float64))


def _run(*args):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_probe_subspaces_and_static_tuner_end_to_end(tmp_path, jsonl):
    grads, tuner = tmp_path / "g.pt", tmp_path / "alloc.safetensors"
    _run("benchmarks/allocation_probe.py", "--model", "tiny-llama", "--task", str(jsonl), "--examples", "8",
         "--threads", "1", "--out", str(tmp_path / "probe.json"), "--save-gradients", str(grads),
         "--write-tuner", "top50%", str(tuner))
    probe = json.loads((tmp_path / "probe.json").read_text())
    # MeZO's A (every s_b = 1) is the second set's total signal
    assert probe["candidates"]["mezo"]["A"] == pytest.approx(sum(probe["per_block"]["S2"]), rel=1e-9, abs=1e-12)
    saved = torch.load(grads)
    assert saved["counts"] == [2, 2, 2, 2] and len(saved["means"]) == 4
    # the saved means are the probe's own statistics: S from quarters 1-2 recomputed from them
    S1 = [float((a.double() * b.double()).sum()) for a, b in zip(saved["means"][0], saved["means"][1])]
    assert S1 == pytest.approx(probe["per_block"]["S1"], rel=2e-2, abs=1e-6)  # bf16 storage
    # the static tuner gives the chosen allocation: zero outside the chosen blocks, energy-normalised
    from checkpoints.artifact import Tuner
    from finetune.data.models import load_model
    from pertnn.blocks import model_blocks
    model, _ = load_model("tiny-llama")
    t = Tuner.from_pretrained(tuner)
    t.check_model(model)
    sigma = t.bank.scales(torch.zeros(t.bank.n_blocks, t.bank.n_features))
    numels = torch.tensor([b.numel for b in model_blocks(model)], dtype=torch.float64)
    assert float((numels * sigma ** 2).sum()) == pytest.approx(float(numels.sum()), rel=1e-6)
    assert 0 < int((sigma > 1e-3).sum()) < len(sigma)
    out = _run("benchmarks/subspace_transfer.py", "--source", str(grads), "--target", str(grads), "--rank", "1",
               "--split", "--out", str(tmp_path / "sub.json"))
    row = json.loads(out.splitlines()[-1])
    assert 0 < row["dims_fraction"] < 1 and row["noise_fraction"] <= 1 + 1e-6
    out = _run("benchmarks/activation_subspace.py", "--model", "tiny-llama", "--task", str(jsonl), "--gradients",
               str(grads), "--examples", "8", "--rank", "1", "--out", str(tmp_path / "act.json"))
    row = json.loads(out.splitlines()[-1])
    assert 0 <= row["act"]["noise_fraction"] <= 1 + 1e-6 and 0 <= row["grad"]["noise_fraction"] <= 1 + 1e-6
