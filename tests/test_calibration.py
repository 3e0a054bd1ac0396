"""The calibration reference: fitted offsets against closed forms and the optimality conditions, and its
block in metrics.json."""
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

import cli
from finetune.calibration import apply_offsets, calibrate, fit_offsets, offset_keys
from finetune.data.tasks import Example


def mc(options, label, prompt="x"):
    return Example(prompt, tuple(options), label)


def test_label_words_in_any_order_get_one_offset_each_the_log_odds_of_their_frequency():
    """Zero scores, ' yes' right 80% of the time, options listed in either order: the optimal offsets make the
    predicted probability the empirical one, b[yes] - b[no] = log(0.8 / 0.2), and the calibrated training
    loss is the entropy of the labels. A per-position offset could not see this prior at all."""
    rng = random.Random(0)
    train = []
    for i in range(50):
        opts = [" yes", " no"] if rng.random() < 0.5 else [" no", " yes"]
        train.append(mc(opts, opts.index(" yes" if i % 5 else " no")))
    test = train[:10]
    mode, names, train_keys, _ = offset_keys(train, test)
    assert mode == "option" and names == [" no", " yes"]
    labels = torch.tensor([e.label for e in train])
    b = fit_offsets(torch.zeros(50, 2, dtype=torch.float64), labels, train_keys, 2)
    assert (b[1] - b[0]).item() == pytest.approx(math.log(4), abs=1e-6)
    report = calibrate(torch.zeros(50, 2, dtype=torch.float64), train, torch.zeros(10, 2, dtype=torch.float64), test)
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert report["train"]["after"]["loss"] == pytest.approx(entropy, abs=1e-9)
    assert report["train"]["before"]["loss"] == pytest.approx(math.log(2))
    assert report["train"]["after"]["accuracy"] == pytest.approx(0.8)


def test_options_of_their_own_get_per_position_offsets_with_the_closed_form():
    """Every example has its own option texts: offsets per slot; with zero scores and labels 5/3/2 over the
    three slots, softmax(b) is (0.5, 0.3, 0.2)."""
    labels = [0] * 5 + [1] * 3 + [2] * 2
    train = [mc((f" a{i}", f" b{i}", f" c{i}"), y) for i, y in enumerate(labels)]
    test = [mc((" p", " q", " r"), 0)]
    mode, names, train_keys, test_keys = offset_keys(train, test)
    assert mode == "position" and names == ["option 1", "option 2", "option 3"]
    b = fit_offsets(torch.zeros(10, 3, dtype=torch.float64), torch.tensor(labels), train_keys, 3)
    assert torch.softmax(b, 0).tolist() == pytest.approx([0.5, 0.3, 0.2], abs=1e-7)
    assert test_keys.tolist() == [[0, 1, 2]]


def test_fit_on_random_scores_is_optimal_and_never_worse_than_raw():
    """Random scores, a ragged number of options (padding -inf) and a skewed label prior: the calibrated
    training loss is below the raw one, and the optimum's first-order condition holds: for every offset,
    the predicted probability mass on its options equals the number of examples whose label is one of them."""
    g = torch.Generator().manual_seed(0)
    n, k = 200, 4
    scores = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    scores[::3, 3] = float("-inf")  # every third example has three options
    labels = torch.where(torch.rand(n, generator=g) < 0.6, torch.zeros(n, dtype=torch.long),
                         torch.randint(1, 4, (n,), generator=g))
    labels[::3] = labels[::3].clamp(max=2)
    keys = torch.arange(k).expand(n, k).clone()
    keys[::3, 3] = -1
    b = fit_offsets(scores, labels, keys, k)
    raw = F.cross_entropy(scores, labels).item()
    cal_scores = apply_offsets(scores, keys, b)
    cal = F.cross_entropy(cal_scores, labels).item()
    assert cal < raw - 0.05
    p = torch.softmax(cal_scores, -1)
    onehot = F.one_hot(labels, k).double()
    assert p.sum(0).tolist() == pytest.approx(onehot.sum(0).tolist(), abs=1e-4)
    # and no small move of any offset lowers the loss
    for j in range(k):
        for h in (1e-3, -1e-3):
            moved = b.clone()
            moved[j] += h
            assert F.cross_entropy(apply_offsets(scores, keys, moved), labels).item() >= cal - 1e-12


def test_finetune_reports_calibration_and_gains_in_strict_json(tmp_path, jsonl):
    out = tmp_path / "run"
    assert cli.main(["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "2", "--batch-size", "4",
                     "--n-test", "8", "--no-save-model", "--lr", "1e-3", "--out", str(out)]) == 0
    text = (out / "metrics.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    cal = m["calibration"]
    assert cal["mode"] == "option" and set(cal["offsets"]) == {" yes", " no"}
    assert cal["train"]["after"]["loss"] <= cal["train"]["before"]["loss"] + 1e-12
    assert cal["test"]["before"]["accuracy"] == m["eval"]["before"]
    assert cal["test"]["before"]["loss"] == pytest.approx(m["eval"]["loss_before"])
    assert m["gain"]["metric_beyond_calibration"] == pytest.approx(m["eval"]["after"] - cal["test"]["after"]["accuracy"])
    assert m["gain"]["loss"] == pytest.approx(m["eval"]["loss_before"] - m["eval"]["loss_after"])
    assert [p["step"] for p in m["curve"]] == [0, 2] and m["curve"][-1]["forwards"] == 4


def test_no_calibration_skips_it(tmp_path, jsonl):
    out = tmp_path / "run"
    assert cli.main(["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "1", "--batch-size", "4",
                     "--n-test", "8", "--no-save-model", "--no-calibration", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["calibration"] is None and set(m["gain"]) == {"metric", "loss"}
