"""Fine-tunes as replayable logs: `finetune --save-log` then `replay` rebuilds the trained weights bit for bit
(sgd with weight decay and a schedule, momentum, adam, a tuner, a direction method), the log is small strict
JSON, survives a resume, and refuses another base model."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cli
from checkpoints import Tuner
from finetune.data.models import load_model
from pertnn import PertNNConfig
from test_head import _jsonl, one_token_examples


def _strict(text: str) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def run_and_replay(tmp_path: Path, task: str, *extra: str, model: str = "tiny-llama") -> tuple[dict, dict, dict, list]:
    out, re = tmp_path / "run", tmp_path / "re"
    argv = ["finetune", "--model", model, "--task", task, "--steps", "5", "--lr", "1e-3", "--batch-size", "4",
            "--n-test", "4", "--out", str(out), "--save-log", *extra]
    assert cli.main(argv) == 0
    assert cli.main(["replay", str(out / "log.jsonl"), "--model", model, "--out", str(re)]) == 0
    base, _ = load_model(model)
    return weights(out / "model"), weights(re), dict(base.state_dict()), _strict((out / "log.jsonl").read_text())


@pytest.mark.parametrize("extra", [
    ("--optimizer", "sgd", "--weight-decay", "0.5", "--schedule", "linear"),
    ("--optimizer", "momentum", "--weight-decay", "0.5"),
    ("--method", "zo-adam", "--weight-decay", "0.5", "--schedule", "cosine"),
    ("--method", "nspsa", "--q", "2"),
    ("--method", "gv", "--candidates", "3"),
])
def test_replay_rebuilds_the_fine_tuned_weights_bit_for_bit(tmp_path, tasks, extra):
    trained, replayed, base, log = run_and_replay(tmp_path, tasks[0], *extra)
    assert trained.keys() == replayed.keys()
    for k in trained:
        assert torch.equal(trained[k], replayed[k]), k
    assert any(not torch.equal(trained[k], base[k]) for k in trained)  # the run moved the weights
    head, steps = log[0], log[1:]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5] and head["format"] == "zotune-log/2"
    assert len((tmp_path / "run" / "log.jsonl").read_bytes()) < 8000 + 60 * len(head["fingerprint"]["blocks"])


def test_replay_of_a_tuner_run_is_bit_for_bit(tmp_path, tasks):
    model, _ = load_model("tiny-llama")
    tuner = Tuner.for_model(model, "tiny-llama", PertNNConfig(hidden=8), seed=3)
    tuner.bank.randomize_output_(torch.Generator().manual_seed(3))  # scales differ across blocks and steps
    path = tuner.save_pretrained(tmp_path / "t.safetensors")
    trained, replayed, _, log = run_and_replay(tmp_path, tasks[0], "--tuner", str(path), "--optimizer", "momentum")
    assert all(torch.equal(trained[k], replayed[k]) for k in trained)
    scales = [s["scales"] for s in log[1:]]
    assert len(set(scales[0])) > 1 and scales[0] != scales[1]


@pytest.mark.parametrize("head", [["--head-lr", "1e-2"], ["--head-race", "1e-3,1e-1"]],
                         ids=["head-lr", "head-race"])
def test_replay_of_a_head_step_run_is_bit_for_bit(tmp_path, head):
    """The head step's rows are in the log (after the ZO update, as in training: with a tied head the rows are also
    perturbed and updated by the ZO method); without them the replay would miss the run's largest change."""
    task = _jsonl(tmp_path, one_token_examples(40))
    trained, replayed, base, log = run_and_replay(tmp_path, task, *head)
    assert all(torch.equal(trained[k], replayed[k]) for k in trained)
    assert log[0]["format"] == "zotune-log/2" and all(len(s["head"]) == 2 for s in log[1:])
    for s in log[1:]:
        s.pop("head")
    plain = tmp_path / "plain.jsonl"  # the same log without its head rows replays to other weights
    plain.write_text("".join(json.dumps(line) + "\n" for line in log))
    assert cli.main(["replay", str(plain), "--model", "tiny-llama", "--out", str(tmp_path / "plain")]) == 0
    assert not all(torch.equal(trained[k], v) for k, v in weights(tmp_path / "plain").items())


def test_a_log_of_format_1_still_replays(tmp_path, tasks, capsys):
    trained, _, _, log = run_and_replay(tmp_path, tasks[0])
    log[0]["format"] = "zotune-log/1"
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(line) + "\n" for line in log))
    assert cli.main(["replay", str(old), "--model", "tiny-llama", "--out", str(tmp_path / "old")]) == 0
    assert all(torch.equal(trained[k], v) for k, v in weights(tmp_path / "old").items())
    log[0]["format"] = "zotune-log/9"
    old.write_text("".join(json.dumps(line) + "\n" for line in log))
    assert cli.main(["replay", str(old), "--model", "tiny-llama", "--out", str(tmp_path / "new")]) == 2
    assert "no zotune-log/1 or zotune-log/2 header line); a newer zotune" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_log_survives_a_resume(tmp_path, tasks, monkeypatch):
    """Killed after step 3 (checkpoint at step 2): the resumed run's log replays to its weights."""
    import finetune.trainer as trainer

    out = tmp_path / "run"
    argv = ["finetune", "--model", "tiny-llama", "--task", tasks[0], "--steps", "5", "--lr", "1e-3", "--batch-size", "4",
            "--n-test", "4", "--out", str(out), "--save-log", "--checkpoint-every", "2", "--optimizer", "adam"]
    original = trainer.step_closure
    calls = {"n": 0}

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # step 4
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(trainer, "step_closure", dying)
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert [s["step"] for s in _strict((tmp_path / ".run.partial" / "log.jsonl").read_text())[1:]] == [1, 2, 3]
    monkeypatch.setattr(trainer, "step_closure", original)
    assert cli.main(argv + ["--resume"]) == 0
    log = _strict((out / "log.jsonl").read_text())
    assert [s["step"] for s in log[1:]] == [1, 2, 3, 4, 5]
    assert cli.main(["replay", str(out / "log.jsonl"), "--model", "tiny-llama", "--out", str(tmp_path / "re")]) == 0
    trained, replayed = weights(out / "model"), weights(tmp_path / "re")
    assert all(torch.equal(trained[k], replayed[k]) for k in trained)


def test_a_log_refuses_another_base_model(tmp_path, tasks, capsys):
    out = tmp_path / "run"
    assert cli.main(["finetune", "--model", "tiny-llama", "--task", tasks[0], "--steps", "2", "--lr", "1e-3",
                     "--batch-size", "4", "--n-test", "4", "--out", str(out), "--save-log", "--no-save-model"]) == 0
    capsys.readouterr()
    assert cli.main(["replay", str(out / "log.jsonl"), "--model", "tiny-qwen2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this log was written for another model (tiny-llama):") and err.count("\n") == 1
    other = tmp_path / "other"  # same architecture, other weights
    model, tok = load_model("tiny-llama", seed=1)
    model.save_pretrained(other)
    tok.save_pretrained(other)
    capsys.readouterr()
    assert cli.main(["replay", str(out / "log.jsonl"), "--model", str(other), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "the base model's weights differ from those the log was written for" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_save_log_refuses_ldsd_in_one_line(tmp_path, tasks, capsys):
    code = cli.main(["finetune", "--model", "tiny-llama", "--task", tasks[0], "--steps", "2", "--method", "ldsd",
                     "--batch-size", "4", "--n-test", "4", "--out", str(tmp_path / "r"), "--save-log"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "error: --save-log does not support --method ldsd (its learned direction mean is not in the log); drop --save-log\n"


def test_save_log_refuses_fo_in_one_line(tmp_path, tasks, capsys):
    """A first-order run's updates are backpropagated gradients, not seeds and coefficients: refused before
    any work, on one line."""
    code = cli.main(["finetune", "--model", "tiny-llama", "--task", tasks[0], "--steps", "2", "--method", "fo",
                     "--batch-size", "4", "--n-test", "4", "--out", str(tmp_path / "r"), "--save-log"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == ("error: --save-log does not support --method fo (a backpropagated update is not a list of seeds "
                   "and coefficients); drop --save-log\n")
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()
