"""Issue 12, "nothing lost, nothing silent": finished runs survive a bad --out, no NaN or inf gets in,
divergence stops the run, concurrent runs are refused, resume checks its inputs, tuner files are checked
end to end, every user mistake is one line, untrusted files are bounded, files follow the umask.

Each test drives the command line (or the public functions) on tiny models and checks the outcome against
what the user must see: the exit code, one line on stderr, and what is (or is not) on disk.
"""
from __future__ import annotations

import errno
import json
import math
import os
import random
import stat
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import cli
from reference import kill_at_call, kill_meta_at, scale_loss
import finetune.bench as bench_module
import finetune.trainer as trainer_module
from checkpoints import Tuner, hub
from checkpoints.pth_import import read_pth
from finetune.common.errors import ZotuneError
from finetune.common.runs import LateRise, late_rise
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from meta.train import MetaConfig, MetaTrainer, meta_train
from pertnn import model_blocks

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def write_mc(path: Path, n: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["apple", "stone", "river", "cloud", "green", "seven"]
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"input": " ".join(rng.choice(words) for _ in range(3)) + ". Answer:",
                                "options": [" yes", " no"], "label": int(rng.random() < 0.3)}) + "\n")
    return path


@pytest.fixture
def mc(tmp_path):
    return write_mc(tmp_path / "mc.jsonl")


def C(mc, *extra):
    """The issue's ``C``: a tiny model on a small multiple-choice file."""
    return ["finetune", "--model", "tiny-llama", "--task", str(mc), "--batch-size", "4", "--n-test", "8", *extra]


def one_line(capsys, argv, code=2) -> str:
    """Run the CLI; it must exit with ``code`` and print one ``error:`` line and no traceback."""
    try:
        got = cli.main(argv)
    except SystemExit as e:  # argparse's errors
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    lines = [line for line in err.strip().splitlines() if "it/s]" not in line]  # transformers' progress bars
    assert len(lines) == 1 and (code != 2 or lines[0].startswith("error: ")) and "Traceback" not in err, err
    return lines[0]


def no_training(monkeypatch):
    """Count the times a fine-tune or meta-train run starts loading its inputs."""
    calls = {"n": 0}
    real_prepare, real_init = trainer_module.prepare, MetaTrainer.__init__

    def prepare(cfg):
        calls["n"] += 1
        return real_prepare(cfg)

    def init(self, cfg):
        calls["n"] += 1
        real_init(self, cfg)

    monkeypatch.setattr(trainer_module, "prepare", prepare)
    monkeypatch.setattr(bench_module, "prepare", prepare)
    monkeypatch.setattr(MetaTrainer, "__init__", init)
    return calls


def strict_load(path: Path):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------- 1. a finished run is never lost
@pytest.mark.parametrize("case", ["dangling symlink", "symlink to an empty folder", "/", ".", "a file's child"])
def test_an_unusable_out_is_refused_before_training(tmp_path, mc, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    if case == "dangling symlink":
        os.symlink(tmp_path / "nowhere", tmp_path / "L")
        out = "L"
    elif case == "symlink to an empty folder":
        os.symlink(tmp_path / "empty", tmp_path / "L")
        out = "L"
    else:
        out = {"/": "/", ".": ".", "a file's child": "afile/sub"}[case]
    calls = no_training(monkeypatch)
    err = one_line(capsys, C(mc, "--steps", "2", "--out", out))
    assert "--out" in err and calls["n"] == 0
    assert not list(tmp_path.glob(".*partial*")) and list((tmp_path / "empty").iterdir()) == []


def test_an_out_that_fills_up_during_the_run_keeps_the_finished_run(tmp_path, mc, capsys, monkeypatch):
    out = tmp_path / "run"
    real_metrics = trainer_module.metrics_dict

    def someone_writes_into_out(*a):
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("not yours")
        return real_metrics(*a)

    monkeypatch.setattr(trainer_module, "metrics_dict", someone_writes_into_out)
    argv = C(mc, "--steps", "4", "--checkpoint-every", "2", "--lr", "1e-3", "--out", str(out))
    err = one_line(capsys, argv)
    work = tmp_path / ".run.partial"
    assert str(work) in err and "--resume" in err
    assert (work / "metrics.json").exists() and (work / "model" / "config.json").exists()
    assert (out / "theirs.txt").read_text() == "not yours"
    monkeypatch.setattr(trainer_module, "metrics_dict", real_metrics)
    (out / "theirs.txt").unlink()
    calls = no_training(monkeypatch)
    assert cli.main(argv + ["--resume"]) == 0
    assert calls["n"] == 0  # the finished run was moved, not trained again
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model"] and not work.exists()


@pytest.mark.parametrize("command", ["bench", "export"])
def test_bench_and_export_refuse_a_nameless_out(tmp_path, mc, llama, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    if command == "bench":
        argv = ["bench", "--model", "tiny-llama", "--task", str(mc), "--methods", "mezo", "--seeds", "0",
                "--forwards", "4", "--batch-size", "4", "--n-test", "4", "--out", "."]
    else:
        src = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
        argv = ["tuners", "export", str(src), "."]
    assert "names no new folder" in one_line(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mc.jsonl"] + (["t.safetensors"] if command ==
                                                                                "export" else []))


def test_meta_train_does_not_overwrite_an_output_that_appeared_during_the_run(tmp_path, tasks, monkeypatch):
    out = tmp_path / "t.safetensors"
    real = MetaTrainer.artifact

    def someone_else_writes(self):
        out.write_text("theirs")
        return real(self)

    monkeypatch.setattr(MetaTrainer, "artifact", someone_else_writes)
    cfg = MetaConfig(model="tiny-llama", tasks=[tasks[0]], steps=3, batch_size=4, hidden=4, max_length=32)
    with pytest.raises(ZotuneError, match="appeared during the run"):
        meta_train(cfg, out, snapshot_every=2, progress=False)
    assert out.read_text() == "theirs" and (tmp_path / ".t.safetensors.partial.pt").exists()


def test_meta_train_into_a_folder_it_cannot_write_is_refused_before_training(tmp_path, tasks, capsys, monkeypatch):
    calls = no_training(monkeypatch)
    # /sys refuses new files even to root, so this holds whoever runs the tests
    err = one_line(capsys, ["meta-train", "--model", "tiny-llama", "--tasks", tasks[0], "--steps", "2",
                            "--batch-size", "4", "--hidden", "4", "--out", "/sys/zotune-test.safetensors"])
    assert "cannot write to /sys" in err and calls["n"] == 0


# ------------------------------------------------------------------------- 2. no NaN or inf gets in
@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"),
                                        ("--checkpoint-every", "-1"), ("--snapshot-every", "-1"), ("--eps", "-inf")])
def test_bad_numbers_are_refused_naming_the_flag(tmp_path, mc, capsys, monkeypatch, flag, value):
    calls = no_training(monkeypatch)
    err = one_line(capsys, C(mc, "--steps", "1", flag, value, "--out", str(tmp_path / "o")))
    assert err.startswith("error: ") and flag in err and calls["n"] == 0 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value", [("--meta-lr", "inf"), ("--fo-lr", "nan"), ("--virtual-lr", "-1"),
                                        ("--checkpoint-every", "-1")])
def test_bad_meta_numbers_are_refused_naming_the_flag(tmp_path, tasks, capsys, monkeypatch, flag, value):
    calls = no_training(monkeypatch)
    out = tmp_path / "t.safetensors"
    err = one_line(capsys, ["meta-train", "--model", "tiny-llama", "--tasks", tasks[0], "--steps", "2",
                            "--batch-size", "4", "--hidden", "4", flag, value, "--out", str(out)])
    assert flag in err and calls["n"] == 0 and not out.exists()


@pytest.mark.parametrize("grid", ["mezo=nan", "mezo=1e-3,inf", "mezo=-1"])
def test_bench_lr_grid_values_are_checked(tmp_path, mc, capsys, monkeypatch, grid):
    calls = no_training(monkeypatch)
    err = one_line(capsys, ["bench", "--model", "tiny-llama", "--task", str(mc), "--methods", "mezo", "--lr-grid",
                            grid, "--out", str(tmp_path / "b")])
    assert "--lr-grid mezo" in err and calls["n"] == 0 and not (tmp_path / "b").exists()


def test_config_validation_catches_what_the_cli_does_not_see(tmp_path):
    from finetune.trainer import FinetuneConfig

    for kw, flag in [({"lr": float("nan")}, "--lr"), ({"weight_decay": float("inf")}, "--weight-decay"),
                     ({"steps": 0}, "--steps"), ({"eps": 0.0}, "--eps")]:
        with pytest.raises(ZotuneError, match=flag):
            FinetuneConfig(model="tiny-llama", **kw).validate()
    for kw, flag in [({"meta_lr": float("inf")}, "--meta-lr"), ({"fo_lr": float("nan")}, "--fo-lr")]:
        with pytest.raises(ZotuneError, match=flag):
            MetaConfig(model="tiny-llama", **kw).validate()


def tuner_with_recommended(path: Path, lr) -> Path:
    """A tuner for tiny-llama whose metadata recommends ``lr`` (NaN written as JSON's NaN token)."""
    model, _ = load_model("tiny-llama")
    Tuner.for_model(model, "tiny-llama").save_pretrained(path)
    tensors = load_file(str(path))
    data = path.read_bytes()
    meta = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]
    doc = json.loads(meta["zotune"])
    doc["recommended"] = {"lr": lr, "eps": 1e-3}
    save_file(tensors, str(path), metadata={**meta, "zotune": json.dumps(doc)})
    return path


@pytest.mark.parametrize("lr", [float("nan"), -1.0])
def test_a_tuners_bad_recommended_lr_is_refused_naming_it(tmp_path, mc, capsys, lr):
    tuner = tuner_with_recommended(tmp_path / "t.safetensors", lr)
    err = one_line(capsys, ["finetune", "--tuner", str(tuner), "--task", str(mc), "--steps", "1", "--batch-size",
                            "4", "--n-test", "4", "--no-save-model", "--out", str(tmp_path / "o")])
    assert "recommended by the tuner" in err and "--lr" in err and not (tmp_path / "o").exists()
    # with --lr given, the recommendation is not used
    assert cli.main(["finetune", "--tuner", str(tuner), "--task", str(mc), "--steps", "1", "--batch-size", "4",
                     "--n-test", "4", "--lr", "1e-4", "--no-save-model", "--out", str(tmp_path / "o")]) == 0


def test_weights_that_become_non_finite_in_the_last_update_are_not_written(tmp_path, mc, capsys, monkeypatch):
    real_loss, calls = TaskScorer.loss, {"n": 0}

    def poisoning_loss(self, model, examples):
        loss = real_loss(self, model, examples)
        calls["n"] += 1
        if calls["n"] == 6:  # the last forward pass of step 3: its loss is finite, the weights will not be
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(TaskScorer, "loss", poisoning_loss)
    out = tmp_path / "o"
    err = one_line(capsys, C(mc, "--steps", "3", "--out", str(out)))
    assert "non-finite" in err and calls["n"] == 6
    assert not out.exists() and not list(tmp_path.glob(".o.partial*"))


def test_metrics_json_is_strict_json(tmp_path, mc, monkeypatch):
    real = TaskScorer.assess  # every evaluation (test and dev loss and metric) goes through assess

    def nan_assess(self, *args, **kw):
        return {**real(self, *args, **kw), "loss": float("nan"), "metric": float("nan")}

    monkeypatch.setattr(TaskScorer, "assess", nan_assess)
    out = tmp_path / "o"
    assert cli.main(C(mc, "--steps", "1", "--no-save-model", "--out", str(out))) == 0
    metrics = strict_load(out / "metrics.json")
    assert metrics["eval"]["before"] is None and metrics["eval"]["after"] is None
    assert metrics["eval"]["loss_before"] is None and metrics["curve"][-1]["test_loss"] is None
    assert metrics["gain"]["metric"] is None


# ------------------------------------------------------------------------- 3. divergence is caught
def test_divergence_stops_the_run_and_writes_nothing(tmp_path, mc, capsys):
    out = tmp_path / "o"
    err = one_line(capsys, C(mc, "--steps", "5", "--lr", "1e30", "--out", str(out)))
    assert "diverged" in err and "lower --lr" in err
    assert not out.exists() and not list(tmp_path.glob(".o.partial*"))


def test_divergence_after_a_snapshot_says_how_to_start_over(tmp_path, mc, capsys, monkeypatch):
    real_loss, calls = TaskScorer.loss, {"n": 0}

    def runaway_loss(self, model, examples):
        calls["n"] += 1
        if calls["n"] == 5:  # in step 3, after the snapshot of step 2: large but finite weights
            with torch.no_grad():
                next(model.parameters()).mul_(1e6)
        return real_loss(self, model, examples)

    monkeypatch.setattr(TaskScorer, "loss", runaway_loss)
    argv = C(mc, "--steps", "6", "--checkpoint-every", "2", "--no-save-model", "--out", str(tmp_path / "o"))
    err = one_line(capsys, argv)
    assert "diverged" in err and "by step 4" in err and "--start-over" in err
    assert [p.name for p in (tmp_path / ".o.partial").iterdir()] == ["snapshot.pt"] and not (tmp_path / "o").exists()
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    assert cli.main(argv + ["--start-over"]) == 0


def test_a_runaway_training_loss_stops_the_run_while_a_large_steady_one_does_not(tmp_path, mc, capsys, monkeypatch):
    # The loss runs away with the weights finite and bounded (the weight-norm guard sees nothing): from the
    # 21st scored batch on (step 11 of MeZO's 2 passes a step), 1000x the real loss.
    scale_loss(monkeypatch, lambda n: 1000.0 if n > 20 else 1.0)
    err = one_line(capsys, C(mc, "--steps", "30", "--out", str(tmp_path / "o")))
    assert "diverged" in err and "training loss grew" in err and "by step 20" in err and "lower --lr" in err
    assert not (tmp_path / "o").exists()
    # the same 1000x from the first step is no runaway: the reference is the run's own start
    scale_loss(monkeypatch, lambda n: 1000.0)
    assert cli.main(C(mc, "--steps", "30", "--no-save-model", "--out", str(tmp_path / "steady"))) == 0


@pytest.mark.parametrize("flags,message", [(["--lr", "1e8"], "does not fit in --dtype fp16"),
                                           (["--lr", "6e4", "--eps", "1e-7"], "the update overflowed fp16")])
def test_fp16_overflow_is_one_line(tmp_path, mc, capsys, flags, message):
    err = one_line(capsys, C(mc, "--steps", "1", "--dtype", "fp16", *flags, "--out", str(tmp_path / "o")))
    assert message in err and "--lr" in err and not (tmp_path / "o").exists()


def _windows(means: list[float], w: int) -> list[float]:
    """Ten windows of ``w`` steps, each at its mean (a staircase: the step-to-step noise is the jumps only)."""
    return [m for m in means for _ in range(w)]


def test_late_rise_by_its_formula():
    """The rule written out: ten windows of w = n // 10 (the last 10 w steps), the lowest not the last, and the last
    window above the lowest by more than a quarter of the fall, a fifth of the lowest and five noise widths."""
    means = [1.0, 0.8, 0.6, 0.5, 0.55, 0.6, 0.7, 0.8, 0.85, 0.9]
    got = late_rise([7.0, 7.0, 7.0] + _windows(means, 10))  # 103 steps: w = 10, the first 3 steps are left out
    assert got == LateRise(lowest=0.5, lowest_steps=(34, 43), last=pytest.approx(0.9), window=10)
    assert "0.500 over steps 34-43, 0.900 over the last 10" in got.note() and "--schedule linear" in got.note()
    # each threshold on its own: a rise of 0.1 is under a quarter of a fall of 0.5 ...
    assert late_rise(_windows([1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6], 10)) is None
    # ... 0.1 is above a quarter of a fall of 0.2, under a fifth of 0.8 ...
    assert late_rise(_windows([1.0, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.9], 10)) is None
    # ... and the same staircase with a rise of 0.3 is one, unless the steps are noisy enough to hide it
    stairs = _windows([1.0, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 1.1], 10)
    assert late_rise(stairs) is not None
    jitter = [x + (0.2 if i % 2 else -0.2) for i, x in enumerate(stairs)]  # sigma 0.28: 5 sigma / sqrt 10 = 0.45
    assert late_rise(jitter) is None
    # the lowest window last, a short run, a non-finite loss: no note
    assert late_rise(_windows([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], 10)) is None
    assert late_rise(_windows(means, 4)) is None  # 40 steps
    assert late_rise([None] + _windows(means, 10)) is None


@pytest.mark.parametrize("steps", [111, 500])
def test_late_rise_is_not_noted_for_noise_around_a_falling_or_flat_loss(steps):
    """Runs of FZOO's and MeZO's lengths here, batch-like noise (sd 0.3 at a loss near 0.7) around a loss that falls
    then stays flat: a note on at most two of 1000 seeds (1 at 111 steps, 0 at 500; with four noise widths instead
    of five, 7 and 3)."""
    notes = 0
    for seed in range(1000):
        rng = random.Random(seed)
        curve = [0.7 + 0.5 * math.exp(-5 * t / steps) for t in range(steps)]
        notes += late_rise([max(0.0, c + rng.gauss(0, 0.3)) for c in curve]) is not None
    assert notes <= 2


def test_finetune_notes_a_late_rise_of_the_training_loss(tmp_path, mc, capsys, monkeypatch):
    """A run whose training loss is tripled from its 41st step on (of 60) ends with the note; the same run with the
    loss tripled throughout ends without it (the note reads the run's own curve)."""
    scale_loss(monkeypatch, lambda n: 3.0 if n > 80 else 1.0)  # MeZO: two passes a step
    assert cli.main(C(mc, "--steps", "60", "--no-save-model", "--out", str(tmp_path / "rise"))) == 0
    out = capsys.readouterr().out
    assert "note: the training loss rose late in the run" in out and "over the last 6" in out
    scale_loss(monkeypatch, lambda n: 3.0)
    assert cli.main(C(mc, "--steps", "60", "--no-save-model", "--out", str(tmp_path / "steady"))) == 0
    assert "rose late" not in capsys.readouterr().out


def test_docs_late_rise_python_example_runs(capsys):
    """docs/python-api.md's late-rise example, its loop's losses a staircase that falls and climbs back: it prints the
    note with its own remedy; on a loss that keeps falling it prints nothing."""
    text = (ROOT / "docs" / "python-api.md").read_text()
    code = text.split("comes from one function", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "losses = []" in code
    rising, falling = [1.0, 0.8, 0.6, 0.5, 0.55, 0.6, 0.7, 0.8, 0.85, 0.9], [1.0 - i / 20 for i in range(10)]
    for means, noted in ((rising, True), (falling, False)):
        exec(compile(code.replace("losses = []", f"losses = {_windows(means, 10)!r}"), "python-api.md", "exec"), {})
        out = capsys.readouterr().out
        assert ("note: the training loss rose late" in out and out.rstrip().endswith("a lower lr")) if noted else not out


# ------------------------------------------------------------------------- 4. concurrent runs
def start_and_wait(argv: list[str], ready: Path, timeout: float = 90) -> subprocess.Popen:
    """Start ``python cli.py argv`` and wait until ``ready`` exists (the run has started working)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the first run did not start in time")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def test_a_second_finetune_on_a_running_out_is_refused_with_the_holders_pid(tmp_path, mc, capsys):
    out = tmp_path / "run"
    argv = C(mc, "--steps", "100000", "--checkpoint-every", "0", "--no-save-model", "--out", str(out))
    first = start_and_wait(argv, tmp_path / ".run.partial")
    try:
        for extra in ([], ["--resume"]):  # following the old advice (--resume) is refused as well
            err = one_line(capsys, argv[:argv.index("--steps") + 1] + ["2"] + argv[argv.index("--steps") + 2:] + extra)
            assert f"another run (pid {first.pid}) holds the lock" in err
        assert first.poll() is None and (tmp_path / ".run.partial").is_dir()
    finally:
        stop(first)
    # the lock ends with its process: a run with --start-over can now take the folder over
    assert cli.main(C(mc, "--steps", "1", "--no-save-model", "--out", str(out), "--start-over")) == 0


def test_a_second_meta_train_to_the_same_out_is_refused_with_the_holders_pid(tmp_path, tasks):
    out = tmp_path / "M.safetensors"
    base = ["meta-train", "--model", "tiny-llama", "--tasks", tasks[0], "--batch-size", "4", "--hidden", "4",
            "--max-length", "32", "--out", str(out)]
    first = start_and_wait(base + ["--steps", "100000", "--checkpoint-every", "1"],
                           tmp_path / ".M.safetensors.partial.pt")
    try:
        cfg = MetaConfig(model="tiny-llama", tasks=[tasks[0]], steps=2, batch_size=4, hidden=4, max_length=32)
        with pytest.raises(ZotuneError, match=rf"another run \(pid {first.pid}\) holds the lock"):
            meta_train(cfg, out, progress=False)
        with pytest.raises(ZotuneError, match=rf"another run \(pid {first.pid}\) holds the lock"):
            meta_train(cfg, out, progress=False, resume=True)
        assert not out.exists()
    finally:
        stop(first)


def test_the_lock_refuses_a_second_holder_and_is_released(tmp_path):
    from finetune.common.runs import RunLock

    target = tmp_path / "x"
    with RunLock(target) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(ZotuneError, match=rf"another run \(pid {os.getpid()}\)"):
            with RunLock(target):
                pass
    assert not lock.path.exists()
    with RunLock(target):
        pass


# ------------------------------------------------------------------------- 5. resume checks its inputs
def killed_run(tmp_path, monkeypatch, capsys, argv) -> Path:
    """Run ``argv`` and kill it in step 3 (the snapshot of step 2 survives); return the snapshot."""
    real = kill_at_call(monkeypatch, 7)
    with pytest.raises(SystemExit):
        cli.main(argv)
    monkeypatch.setattr(TaskScorer, "loss", real)
    capsys.readouterr()
    snap = tmp_path / ".run.partial" / "snapshot.pt"
    assert snap.exists()
    return snap


def test_resume_refuses_changed_task_data(tmp_path, mc, capsys, monkeypatch):
    argv = C(mc, "--steps", "4", "--checkpoint-every", "2", "--lr", "1e-3", "--no-save-model",
             "--out", str(tmp_path / "run"))
    killed_run(tmp_path, monkeypatch, capsys, argv)
    write_mc(mc, seed=1)  # same size and kind, other examples
    err = one_line(capsys, argv + ["--resume"])
    assert "the task data changed" in err and not (tmp_path / "run").exists()
    write_mc(mc, seed=0)  # put it back: the run resumes
    assert cli.main(argv + ["--resume"]) == 0


def test_resume_refuses_changed_model_weights(tmp_path, mc, capsys, monkeypatch):
    model, tok = load_model("tiny-llama")
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    argv = ["finetune", "--model", str(folder), "--task", str(mc), "--batch-size", "4", "--n-test", "8", "--steps",
            "4", "--checkpoint-every", "2", "--no-save-model", "--out", str(tmp_path / "run")]
    killed_run(tmp_path, monkeypatch, capsys, argv)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(folder)
    err = one_line(capsys, argv + ["--resume"])
    assert "the model changed" in err


def test_resume_refuses_a_changed_tuner(tmp_path, mc, capsys, monkeypatch):
    model, _ = load_model("tiny-llama")
    path = Tuner.for_model(model, "tiny-llama", seed=0).save_pretrained(tmp_path / "t.safetensors")
    argv = ["finetune", "--tuner", str(path), "--task", str(mc), "--batch-size", "4", "--n-test", "8", "--steps",
            "4", "--lr", "1e-3", "--checkpoint-every", "2", "--no-save-model", "--out", str(tmp_path / "run")]
    killed_run(tmp_path, monkeypatch, capsys, argv)
    other = Tuner.for_model(model, "tiny-llama", seed=0)
    other.bank.randomize_output_(torch.Generator().manual_seed(5))
    path.unlink()
    other.save_pretrained(path)
    assert "the tuner changed" in one_line(capsys, argv + ["--resume"])


def test_a_corrupt_snapshot_is_one_line(tmp_path, mc, capsys, monkeypatch):
    argv = C(mc, "--steps", "4", "--checkpoint-every", "2", "--no-save-model", "--out", str(tmp_path / "run"))
    snap = killed_run(tmp_path, monkeypatch, capsys, argv)
    snap.write_bytes(snap.read_bytes()[:200])
    err = one_line(capsys, argv + ["--resume"])
    assert "snapshot" in err and "--start-over" in err and "weights_only" not in err
    assert cli.main(argv + ["--start-over"]) == 0


def test_after_a_nan_stop_the_message_says_how_to_restart(tmp_path, mc, capsys, monkeypatch):
    real_loss, calls = TaskScorer.loss, {"n": 0}

    def diverging_loss(self, model, examples):
        calls["n"] += 1
        return real_loss(self, model, examples) * (float("nan") if calls["n"] > 8 else 1.0)

    monkeypatch.setattr(TaskScorer, "loss", diverging_loss)
    argv = C(mc, "--steps", "6", "--checkpoint-every", "2", "--no-save-model", "--out", str(tmp_path / "run"))
    err = one_line(capsys, argv)
    assert "loss became nan" in err and "--start-over" in err and str(tmp_path / ".run.partial") in err
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    assert cli.main(argv + ["--lr", "1e-7", "--start-over"]) == 0


def test_meta_train_nan_stop_says_how_to_restart(tmp_path, tasks, monkeypatch):
    advance, real_loss = MetaTrainer.advance, TaskScorer.loss

    def nan_from_step_3(self):
        if self.step == 2:
            monkeypatch.setattr(TaskScorer, "loss", lambda s, m, e: real_loss(s, m, e) * float("nan"))
        return advance(self)

    monkeypatch.setattr(MetaTrainer, "advance", nan_from_step_3)
    cfg = MetaConfig(model="tiny-llama", tasks=[tasks[0]], steps=4, batch_size=4, hidden=4, max_length=32)
    out = tmp_path / "t.safetensors"
    with pytest.raises(ZotuneError, match=r"non-finite at meta step 3.*--start-over"):
        meta_train(cfg, out, snapshot_every=2, progress=False)
    assert not out.exists()
    monkeypatch.setattr(MetaTrainer, "advance", advance)
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    assert meta_train(cfg, out, snapshot_every=2, progress=False, start_over=True).provenance["steps"] == 4


def test_meta_resume_refuses_changed_task_data(tmp_path, tasks, monkeypatch):
    cfg = MetaConfig(model="tiny-llama", tasks=tasks, steps=4, batch_size=4, hidden=4, max_length=32)
    out = tmp_path / "t.safetensors"
    advance = kill_meta_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        meta_train(cfg, out, snapshot_every=2, progress=False)
    monkeypatch.setattr(MetaTrainer, "advance", advance)
    lines = Path(tasks[1]).read_text().splitlines()
    Path(tasks[1]).write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # the same examples in another order
    with pytest.raises(ZotuneError, match="the task data changed"):
        meta_train(cfg, out, resume=True, snapshot_every=2, progress=False)
    assert not out.exists()


# ------------------------------------------------------------------------- 6. tuner files checked end to end
@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")[0]


def header_of(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n])


def test_overwritten_tensor_bytes_are_detected(tmp_path, llama):
    path = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    n, header = header_of(path)
    start, _ = header["pertnn.W1"]["data_offsets"]
    data = bytearray(path.read_bytes())
    at = 8 + n + start + 16
    data[at:at + 8] = struct.pack("<2f", 0.5, -0.25)  # finite values: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ZotuneError, match="does not match the checksum"):
        Tuner.from_pretrained(path)


def test_files_without_a_checksum_still_load(tmp_path, llama):
    older = ROOT / "reports" / "tuner-smollm2" / "strategyqa" / "untrained.safetensors"  # written before it
    assert "tensors_sha256" not in json.loads(header_of(older)[1]["__metadata__"]["zotune"])
    assert Tuner.from_pretrained(older).base_model
    shipped = ROOT / "checkpoints" / "pretrained" / "smollm2-135m.safetensors"  # checksum added, tensors as before
    assert "tensors_sha256" in json.loads(header_of(shipped)[1]["__metadata__"]["zotune"])
    assert Tuner.from_pretrained(shipped).base_model
    path = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    meta = header_of(path)[1]["__metadata__"]
    doc = json.loads(meta["zotune"])
    del doc["tensors_sha256"]
    save_file(load_file(str(path)), str(path), metadata={**meta, "zotune": json.dumps(doc)})
    assert Tuner.from_pretrained(path).base_model == "tiny-llama"


def with_metadata(path: Path, **fields) -> Path:
    meta = header_of(path)[1]["__metadata__"]
    doc = json.loads(meta["zotune"]) | fields
    save_file(load_file(str(path)), str(path), metadata={**meta, "zotune": json.dumps(doc)})
    return path


@pytest.mark.parametrize("field,value", [("blocks", "abc"), ("recommended", [1, 2]), ("base_model", ["a"]),
                                         ("provenance", "x"), ("tied_groups", [1]), ("direction_policy", 3),
                                         ("recommended", {"lr": "fast"})])
def test_metadata_of_the_wrong_type_is_one_line(tmp_path, llama, field, value):
    path = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    with pytest.raises(ZotuneError, match="is not a valid zotune tuner"):
        Tuner.from_pretrained(with_metadata(path, **{field: value}))


def test_tuners_list_reports_a_bad_file_and_goes_on(tmp_path, llama, monkeypatch, capsys):
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "SHIPPED_DIR", tmp_path / "shipped")
    bad = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "shipped" / "a-bad.safetensors")
    with_metadata(bad, blocks="abc")
    good = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "shipped" / "b-good.safetensors")
    assert cli.main(["tuners", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("unreadable:" in line and "a-bad" in line for line in out)
    assert any(str(good) in line for line in out) and any("base model tiny-llama" in line for line in out)


def test_meta_train_writes_strict_json_metadata_and_log(tmp_path, tasks, monkeypatch):
    monkeypatch.setattr(MetaTrainer, "gain", lambda self: float("nan"))
    out = tmp_path / "t.safetensors"
    meta_train(MetaConfig(model="tiny-llama", tasks=[tasks[0]], steps=2, batch_size=4, hidden=4, max_length=32),
               out, progress=False)
    log = strict_load(tmp_path / "t.metalog.json")
    assert log[0]["first_order_gain"] is None
    doc = json.loads(header_of(out)[1]["__metadata__"]["zotune"], parse_constant=lambda t: pytest.fail(t))
    assert doc["provenance"]["summary"]["first_order_gain"] is None


# ------------------------------------------------------------------------- 7. one-line errors everywhere
@pytest.mark.parametrize("row", [{"input": "", "options": [" a", " b"], "label": 0},
                                 {"input": "  ", "target": "x"}])
def test_empty_inputs_are_one_line(tmp_path, capsys, row):
    task = tmp_path / "t.jsonl"
    good = {k: v for k, v in row.items()} | {"input": "a b c. Answer:"}
    task.write_text("".join(json.dumps(good) + "\n" for _ in range(10)) + json.dumps(row) + "\n")
    err = one_line(capsys, ["finetune", "--model", "tiny-llama", "--task", str(task), "--steps", "1",
                            "--batch-size", "4", "--n-test", "4", "--out", str(tmp_path / "o")])
    assert "line 11" in err and "'input'" in err


def test_import_pth_out_must_be_a_new_safetensors_file(tmp_path, llama, capsys):
    torch.manual_seed(0)
    mods = {b.name: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)) for b in model_blocks(llama)}
    torch.save(mods, tmp_path / "m.pth")
    base = ["tuners", "import-pth", str(tmp_path / "m.pth"), "--model", "tiny-llama", "--threads", "1", "--out"]
    (tmp_path / "folder.safetensors").mkdir()
    assert "already exists" in one_line(capsys, base + [str(tmp_path / "folder.safetensors")])
    assert ".safetensors" in one_line(capsys, base + [str(tmp_path / "t.bin")])
    assert not (tmp_path / "t.bin").exists()


def test_disk_full_while_snapshotting_is_one_line_and_resumable(tmp_path, mc, capsys, monkeypatch):
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    argv = C(mc, "--steps", "6", "--checkpoint-every", "2", "--no-save-model", "--out", str(tmp_path / "run"))
    err = one_line(capsys, argv)
    assert "disk is full" in err and "--resume" in err
    work = tmp_path / ".run.partial"
    assert [p.name for p in work.iterdir()] == ["snapshot.pt"]  # the snapshot of step 2, nothing half-written
    monkeypatch.setattr(torch, "save", real_save)
    assert cli.main(argv + ["--resume"]) == 0


def disk_full(kind: str):
    """A writer that fails as a full disk does: Python's OSError, or safetensors' own error type."""
    from safetensors import SafetensorError

    def full(*a, **k):
        if kind == "safetensors":
            raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at '
                                  'path "/x/.tmp"')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return full


def test_disk_full_while_saving_the_model_is_one_line_and_resumable(tmp_path, mc, capsys, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    real = modeling_utils.safe_save_file
    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full("safetensors"))
    argv = C(mc, "--steps", "4", "--checkpoint-every", "2", "--out", str(tmp_path / "run"))
    err = one_line(capsys, argv)
    assert "disk is full; free some space and rerun the same command with --resume" in err
    assert [p.name for p in (tmp_path / ".run.partial").iterdir()] == ["snapshot.pt"]
    monkeypatch.setattr(modeling_utils, "safe_save_file", real)
    assert cli.main(argv + ["--resume"]) == 0 and (tmp_path / "run" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("kind", ["os", "safetensors"])
def test_meta_train_with_a_full_disk_at_the_end_keeps_its_snapshot(tmp_path, tasks, monkeypatch, kind):
    import checkpoints.artifact as artifact

    full = disk_full(kind)

    real = artifact.save_file
    monkeypatch.setattr(artifact, "save_file", full)
    cfg = MetaConfig(model="tiny-llama", tasks=[tasks[0]], steps=4, batch_size=4, hidden=4, max_length=32)
    out = tmp_path / "t.safetensors"
    with pytest.raises(ZotuneError, match="disk is full; free some space and rerun the same command with --resume"):
        meta_train(cfg, out, snapshot_every=2, progress=False)
    assert (tmp_path / ".t.safetensors.partial.pt").exists() and not out.exists()
    assert not (tmp_path / "t.metalog.json").exists()
    monkeypatch.setattr(artifact, "save_file", real)
    assert meta_train(cfg, out, resume=True, snapshot_every=2, progress=False).provenance["steps"] == 4
    assert not (tmp_path / ".t.safetensors.partial.pt").exists()


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parser", interrupted)
    try:
        assert "interrupted" in one_line(capsys, ["finetune"], code=130)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during start-up escaped as a traceback")


# ------------------------------------------------------------------------- 8. bounded resources on .pth files
def test_a_stride_0_tensor_is_refused_before_allocating(tmp_path, llama):
    torch.manual_seed(0)
    mods = {b.name: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)) for b in model_blocks(llama)}
    first = next(iter(mods.values()))[0]
    first.weight = nn.Parameter(torch.zeros(1).expand(5_000_000, 5))  # 100 MB if materialised, 4 bytes stored
    torch.save(mods, tmp_path / "m.pth")
    assert (tmp_path / "m.pth").stat().st_size < 200_000
    with pytest.raises(ZotuneError, match="does not fit its storage"):
        read_pth(tmp_path / "m.pth")


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, llama, monkeypatch):
    import checkpoints.pth_import as pth_import

    torch.manual_seed(0)
    mods = {b.name: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)) for b in model_blocks(llama)}
    torch.save(mods, tmp_path / "m.pth")
    assert read_pth(tmp_path / "m.pth")  # a plain file is well within the limits
    with zipfile.ZipFile(tmp_path / "m.pth", "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/data/bomb", b"\0" * (4 << 20))  # 4 MB of zeros: a few kB compressed
    assert (tmp_path / "m.pth").stat().st_size < 200_000
    monkeypatch.setattr(pth_import, "MAX_ARCHIVE_BYTES", 2 << 20, raising=False)  # a bomb, at test scale
    read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: pytest.fail("read before the size check")
                        if str(a[1]).endswith("bomb") else read(*a, **k))
    with pytest.raises(ZotuneError, match="zip bomb"):
        read_pth(tmp_path / "m.pth")


# ------------------------------------------------------------------------- 9. files and the Hub cache
def test_saved_model_files_follow_the_umask(tmp_path, mc):
    out = tmp_path / "o"
    assert cli.main(C(mc, "--steps", "1", "--out", str(out))) == 0
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (out / "model").iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~mask, modes
    assert set(modes.values()) == {0o666 & ~mask}


def test_an_existing_metalog_is_not_overwritten(tmp_path, tasks, capsys, monkeypatch):
    log = tmp_path / "t.metalog.json"
    log.write_text("[]")
    calls = no_training(monkeypatch)
    err = one_line(capsys, ["meta-train", "--model", "tiny-llama", "--tasks", tasks[0], "--steps", "1",
                            "--batch-size", "4", "--hidden", "4", "--out", str(tmp_path / "t.safetensors")])
    assert "t.metalog.json" in err and log.read_text() == "[]" and calls["n"] == 0
    assert not (tmp_path / "t.safetensors").exists()


def test_pull_honours_or_refuses_file(tmp_path, llama, capsys, monkeypatch):
    from checkpoints import remote

    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    src = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    calls = []

    def fake_download(repo_id, filename, local_dir):
        calls.append(filename)
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        return str(dest)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert cli.main(["tuners", "pull", "hf://me/t", "--file", "v2/x.safetensors"]) == 0
    assert calls == ["v2/x.safetensors"]
    err = one_line(capsys, ["tuners", "pull", "hf://me/t/a.safetensors", "--file", "b.safetensors"])
    assert "--file" in err and calls == ["v2/x.safetensors"]
    err = one_line(capsys, ["tuners", "pull", "me/t", "--file", "../../escape.safetensors"])
    assert "not a file path inside a repository" in err and calls == ["v2/x.safetensors"]
    assert not (tmp_path / "cache" / "escape.safetensors").exists()
    assert remote.TUNER_FILE  # (the default name is unchanged)


def test_a_failed_offline_pull_leaves_no_empty_folders(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants as hub_constants

    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    err = one_line(capsys, ["tuners", "pull", "me/absent"])
    assert "unreachable" in err
    assert not (tmp_path / "cache" / "tuners").exists()


def test_export_validates_repo(tmp_path, llama, capsys):
    src = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    err = one_line(capsys, ["tuners", "export", str(src), str(tmp_path / "x"), "--repo", "../../x"])
    assert "not a Hugging Face Hub repository id" in err and not (tmp_path / "x").exists()
