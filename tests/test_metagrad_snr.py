"""benchmarks/metagrad_snr.py: its signal-to-noise estimate against explicit loops and a distribution of known
SNR, the energy projection, and one end-to-end run on a tiny model checked against plain autograd."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from metagrad_snr import bootstrap_snr, difference, interval, project_out, snr, table  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PATH": "/usr/bin:/bin"}


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/metagrad_snr.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def test_snr_by_explicit_loops_leaves_out_products_within_a_pair():
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(6, 5, generator=gen, dtype=torch.float64) + 0.3
    groups = [0, 0, 1, 2, 2, 2]
    cross = [float(vectors[r] @ vectors[s]) for r in range(6) for s in range(6) if groups[r] != groups[s]]
    signal = sum(cross) / len(cross)
    total = sum(float(v @ v) for v in vectors) / 6
    out = snr(vectors, groups)
    assert out["signal"] == pytest.approx(signal, rel=1e-12)
    assert out["total"] == pytest.approx(total, rel=1e-12)
    assert out["snr"] == pytest.approx(signal / (total - signal), rel=1e-12)
    with pytest.raises(ValueError):
        snr(vectors, [0] * 6)


def test_snr_is_unbiased_when_estimates_share_their_batch_noise():
    """g = mu + beta_pair + n: the SNR of one estimate is |mu|^2 / (E|beta|^2 + E|n|^2) = 12.5 / 62.5; the
    shared beta is noise and must not be read as signal."""
    gen = torch.Generator().manual_seed(1)
    pairs, draws, dim = 400, 3, 50
    mu = torch.full((dim,), 0.5, dtype=torch.float64)
    beta = torch.randn(pairs, 1, dim, generator=gen, dtype=torch.float64)
    vectors = (mu + beta + 0.5 * torch.randn(pairs, draws, dim, generator=gen, dtype=torch.float64)).reshape(-1, dim)
    groups = [p for p in range(pairs) for _ in range(draws)]
    out = snr(vectors, groups)
    assert out["snr"] == pytest.approx(0.2, abs=0.03)
    low, high = interval(bootstrap_snr(vectors, groups, draws=200))
    assert low < out["snr"] < high and low < 0.2 < high


def test_difference_is_paired_over_batch_pairs():
    """Two estimators measured on the same pairs are resampled together: one against itself differs by exactly
    zero in every resample, and a less noisy one (the pair-shared part removed) is better by an interval above 0."""
    gen = torch.Generator().manual_seed(2)
    pairs, dim = 60, 20
    mu = torch.full((dim,), 0.5, dtype=torch.float64)
    beta = torch.randn(pairs, dim, generator=gen, dtype=torch.float64)
    noisy = mu + beta + torch.randn(pairs, dim, generator=gen, dtype=torch.float64)
    clean = mu + 0.3 * torch.randn(pairs, dim, generator=gen, dtype=torch.float64)
    groups = list(range(pairs))
    same = difference((noisy, groups, 2.0), (noisy, groups, 2.0))
    assert same["per_estimate"] == 0 and same["per_estimate_interval"] == [0.0, 0.0]
    better = difference((clean, groups, 1.0), (noisy, groups, 1.0))
    assert better["per_estimate_interval"][0] > 0
    # per second: the cleaner estimator at 100x the cost is worse
    slower = difference((clean, groups, 100.0), (noisy, groups, 1.0))
    assert slower["per_second"] < 0
    with pytest.raises(ValueError):
        difference((clean, groups, 1.0), (noisy, [g + 1 for g in groups], 1.0))


def test_project_out_removes_the_energy_direction_only():
    n = torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0, 3.0], [9.0, -9.0, -3.0]], dtype=torch.float64)  # the second is orthogonal to n
    out = project_out(v, n)
    assert torch.allclose(out @ n, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out[1], v[1])


def test_end_to_end_on_a_tiny_model(tmp_path, jsonl):
    out = tmp_path / "snr.json"
    proc = _run("--model", "tiny-llama", "--task", str(jsonl), "--pairs", "3", "--draws", "2", "--probes", "1",
                "--batch-size", "4", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["groups"]["today"] == [0, 0, 1, 1, 2, 2] and result["groups"]["objective"] == [0, 1, 2]
    for label in ("whole", "allocation"):
        assert set(result[label]) >= {"today", "objective", "first_order"}
    # the first-order estimate of pair 1, recomputed with plain autograd: -2 lr <grad L_train, grad L_held> per block
    from finetune.data.models import load_model
    from finetune.data.scoring import TaskScorer
    from finetune.data.tasks import load_task
    from pertnn.blocks import trainable_tensors
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok)
    task = load_task(str(jsonl), seed=0, n_train=12, n_dev=12, n_test=0)
    params = [p for _, p in trainable_tensors(model)]
    a = torch.autograd.grad(scorer.loss(model, task.train[4:8]), params, allow_unused=True)
    h = torch.autograd.grad(scorer.loss(model, task.dev[4:8]), params, allow_unused=True)
    expected = [0.0 if x is None or y is None else -2 * 3e-5 * float((x.double() * y.double()).sum())
                for x, y in zip(a, h)]
    assert result["estimates"]["first_order"][1] == pytest.approx(expected, rel=1e-4, abs=1e-15)
    # today's estimator is not the objective's: it reads one noise draw, so its two draws on a batch differ
    assert result["estimates"]["today"][0] != result["estimates"]["today"][1]
    # the summary table: a run against itself transfers perfectly; its SNR cell is the run's own
    text = table([out, out])
    assert "- today: 1.000 / 1.000" in text and "- objective: 1.000 / 1.000" in text
    assert f"| 3 | whole | today | {result['whole']['today']['snr']:.3g} [" in text
    # --probes 0 measures today's and the first-order part only, on the same batch pairs
    proc = _run("--model", "tiny-llama", "--task", str(jsonl), "--pairs", "3", "--draws", "2", "--probes", "0",
                "--batch-size", "4", "--threads", "1", "--out", str(tmp_path / "p0.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    without = json.loads((tmp_path / "p0.json").read_text())
    assert set(without["estimates"]) == {"today", "first_order"}
    assert without["estimates"]["first_order"] == result["estimates"]["first_order"]
    assert "- first_order: 1.000 / 1.000" in table([tmp_path / "p0.json", out])


def test_bad_input_is_one_line(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    for args in (["--model", "tiny-llama", "--task", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.json")],
                 ["--model", "tiny-llama", "--task", "bigbench:winowhy", "--out", str(blocked / "o.json")],
                 ["table", str(tmp_path / "none.json")]):
        proc = _run(*args, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-1000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
