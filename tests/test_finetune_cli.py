"""The fine-tune loop, the bench and the command line, end to end on tiny models and a JSONL task."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
from reference import kill_at_call
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer

ROOT = Path(__file__).resolve().parents[1]


def test_cli_finetune_writes_metrics_and_a_loadable_model(tmp_path, jsonl):
    out = tmp_path / "run"
    code = cli.main(["finetune", "--model", "tiny-qwen2", "--task", str(jsonl), "--steps", "6", "--lr", "1e-3",
                     "--batch-size", "4", "--eval-every", "3", "--n-test", "8", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("method", "model", "task", "steps", "forwards", "train_loss", "eval"):
        assert key in metrics
    assert metrics["method"] == "mezo" and metrics["optimizer"] == "sgd" and metrics["steps"] == 6 and metrics["forwards"] == 12
    assert len(metrics["train_loss"]) == 6 and set(metrics["eval"]) >= {"before", "after", "metric"}
    assert [h["step"] for h in metrics["eval_history"]] == [3, 6]
    tuned, _ = load_model(str(out / "model"))
    base, _ = load_model("tiny-qwen2")
    changed = [not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values())]
    assert any(changed)
    assert not list(tmp_path.glob(".run.partial*"))


@pytest.mark.parametrize("method,optimizer,q,per_step", [("nspsa", "sgd", 3, 6), ("zo-adam", "sgd", None, 2),
                                                          ("mezo", "momentum", None, 2)])
def test_cli_methods_count_forward_passes(tmp_path, jsonl, method, optimizer, q, per_step):
    out = tmp_path / "run"
    argv = ["finetune", "--model", "tiny-opt", "--task", str(jsonl), "--steps", "2", "--method", method,
            "--optimizer", optimizer, "--batch-size", "4", "--n-test", "4", "--out", str(out), "--no-save-model"]
    assert cli.main(argv + (["--q", str(q)] if q else [])) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forwards"] == 2 * per_step
    assert not (out / "model").exists()


def bad(tmp_path, capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_user_mistakes_give_one_line_errors_and_leave_nothing(tmp_path, capsys, jsonl):
    out = str(tmp_path / "run")
    common = ["--task", str(jsonl), "--out", out, "--steps", "1"]
    assert "unknown model" in bad(tmp_path, capsys, ["finetune", "--model", "no-such-model", *common])
    assert "unknown task" in bad(tmp_path, capsys, ["finetune", "--model", "tiny-llama", "--task", "nope",
                                                    "--out", out])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "options": ["x", "y"], "label": 0}\n{"input": "b", "options": \n')
    assert "line 2" in bad(tmp_path, capsys, ["finetune", "--model", "tiny-llama", "--task", str(broken),
                                              "--out", out])
    with pytest.raises(SystemExit) as exc:
        cli.main(["finetune", "--model", "tiny-llama", "--method", "sgd-magic", *common])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not os.path.exists(out)
    assert not list(tmp_path.glob(".run.partial*"))


def test_missing_task_file_names_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    err = bad(tmp_path, capsys, ["finetune", "--model", "tiny-llama", "--task", str(missing),
                                 "--out", str(tmp_path / "run")])
    assert "missing.jsonl" in err


def test_nan_loss_stops_with_an_error_and_no_output(tmp_path, capsys, jsonl, monkeypatch):
    real_loss, calls = TaskScorer.loss, {"n": 0}

    def diverging_loss(self, model, examples):
        calls["n"] += 1
        return real_loss(self, model, examples) * (float("nan") if calls["n"] > 4 else 1.0)

    monkeypatch.setattr(TaskScorer, "loss", diverging_loss)
    out = tmp_path / "run"
    err = bad(tmp_path, capsys, ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "20",
                                 "--batch-size", "4", "--n-test", "4", "--out", str(out)])
    assert "loss became nan at step 3" in err and "lower --lr" in err
    assert not out.exists() and not list(tmp_path.glob(".run.partial*"))


def test_existing_output_is_not_overwritten(tmp_path, capsys, jsonl):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    err = bad(tmp_path, capsys, ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--out", str(out)])
    assert "already exists" in err
    assert (out / "metrics.json").read_text() == "{}"


def test_process_prints_no_traceback_for_a_user_mistake(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "finetune", "--model", "meta-llama/NoSuch-1B",
                           "--task", "sst2", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_bench_compares_methods_at_equal_forward_passes(tmp_path, jsonl):
    out = tmp_path / "bench"
    code = cli.main(["bench", "--model", "tiny-gpt2", "--task", str(jsonl), "--methods", "mezo,nspsa",
                     "--lr-grid", "mezo=1e-3,1e-4", "--seeds", "0,1", "--forwards", "16", "--q", "2",
                     "--batch-size", "4", "--n-test", "4", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    assert {r["forwards"] for r in report["runs"]} == {16}
    assert sorted({(r["method"], r["lr"]) for r in report["runs"]}) == [("mezo", 1e-4), ("mezo", 1e-3),
                                                                         ("nspsa", 1e-6)]
    assert len(report["runs"]) == 6
    assert sum(bool(r.get("best")) for r in report["summary"]) == 2
    assert (out / "bench.md").read_text().startswith("# ")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_run_resumes_to_the_same_result(tmp_path, jsonl, monkeypatch, capsys):
    argv = ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "7", "--lr", "1e-3",
            "--batch-size", "4", "--n-test", "8", "--eval-every", "2", "--checkpoint-every", "3",
            "--optimizer", "momentum"]
    assert cli.main(argv + ["--out", str(tmp_path / "straight")]) == 0

    real_loss = kill_at_call(monkeypatch, 9)  # killed in step 5's first forward pass: the snapshot of step 3 survives
    out = tmp_path / "resumed"
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--out", str(out)])
    assert exc.value.code == 130 and "--resume" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in (tmp_path / ".resumed.partial").iterdir()] == ["snapshot.pt"]
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    assert "add --resume" in bad(tmp_path, capsys, argv + ["--out", str(out)])
    assert "lr=0.001" in bad(tmp_path, capsys, [*argv, "--out", str(out), "--resume", "--lr", "1e-2"])
    assert cli.main(argv + ["--out", str(out), "--resume"]) == 0
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("train_loss", "forwards", "eval", "eval_history"):
        assert a[key] == b[key], key
    ma, _ = load_model(str(tmp_path / "straight" / "model"))
    mb, _ = load_model(str(out / "model"))
    for (k, v), w in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(v, w), k
    assert not (tmp_path / ".resumed.partial").exists() and not (out / "snapshot.pt").exists()


@pytest.mark.parametrize("schedule,extend_ok", [("linear", False), ("linear-warmup", False), ("constant", True)])
def test_resuming_with_more_steps_needs_a_constant_schedule(tmp_path, jsonl, monkeypatch, capsys, schedule, extend_ok):
    argv = ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--lr", "1e-3", "--batch-size", "4",
            "--n-test", "8", "--checkpoint-every", "2", "--schedule", schedule, "--no-save-model",
            "--out", str(tmp_path / "run")]
    real_loss = kill_at_call(monkeypatch, 7)  # killed in step 3: the snapshot of step 2 survives
    with pytest.raises(SystemExit):
        cli.main([*argv, "--steps", "4"])
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    capsys.readouterr()
    if extend_ok:
        assert cli.main([*argv, "--steps", "6", "--resume"]) == 0
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 6
    else:
        assert "--steps 4" in bad(tmp_path, capsys, [*argv, "--steps", "6", "--resume"])
        assert cli.main([*argv, "--steps", "4", "--resume"]) == 0


def test_nothing_to_resume(tmp_path, jsonl, capsys):
    err = bad(tmp_path, capsys, ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--resume",
                                 "--out", str(tmp_path / "run")])
    assert "nothing to resume" in err and not (tmp_path / ".run.partial").exists()


def test_readme_python_example_runs():
    """The README's Python API example, on a tiny model and 3 steps instead of SmolLM2 and 100."""
    text = (ROOT / "README.md").read_text()
    code = text.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = code.replace('"smollm2-135m"', '"tiny-llama"').replace("range(100)", "range(3)")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["opt"].engine.forwards == 6 and 0.0 <= scope["scorer"].evaluate(
        scope["model"], scope["task"].test[:4]) <= 1.0


@pytest.mark.parametrize("grid,message", [(["mezo=fast"], "comma-separated numbers"),
                                          (["zo-adam=1e-4"], "not in --methods"), (["mezo"], "METHOD=LR")])
def test_bad_lr_grid(tmp_path, capsys, jsonl, grid, message):
    err = bad(tmp_path, capsys, ["bench", "--model", "tiny-llama", "--task", str(jsonl), "--methods", "mezo",
                                 "--lr-grid", *grid, "--out", str(tmp_path / "b")])
    assert message in err and not (tmp_path / "b").exists()


def test_compare_tables_finished_runs_from_their_metrics(tmp_path, jsonl, capsys):
    """`compare` shows each run's own numbers (read back from metrics.json here), the calibration reference, and the
    gains raw and beyond it; the finetune line names the reference too."""
    common = ["--model", "tiny-gpt2", "--task", str(jsonl), "--steps", "3", "--batch-size", "4", "--n-test", "8",
              "--no-save-model"]
    for method in ("mezo", "nspsa"):
        assert cli.main(["finetune", "--method", method, "--lr", "1e-3", *common, "--out", str(tmp_path / method)]) == 0
    printed = capsys.readouterr().out
    metrics = {m: json.loads((tmp_path / m / "metrics.json").read_text()) for m in ("mezo", "nspsa")}
    cal = metrics["mezo"]["calibration"]["test"]["after"]["accuracy"]
    assert f"(fitting only the label prior gives {cal:.4f})" in printed
    assert cli.main(["compare", str(tmp_path / "mezo"), str(tmp_path / "nspsa")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mezo") or
            line.startswith("| nspsa")]
    assert len(rows) == 2
    for row, name in zip(rows, ("mezo", "nspsa")):
        m = metrics[name]
        cells = [c.strip() for c in row.strip("|").split("|")]
        ev = m["eval"]
        assert cells[:3] == [name, name, str(m["forwards"])]
        assert cells[3] == f"{ev['loss_before']:.4f} -> {ev['loss_after']:.4f}"
        assert cells[4] == f"{ev['before']:.3f} -> {ev['after']:.3f}"
        assert cells[5] == f"{m['calibration']['test']['after']['accuracy']:.3f}"
        assert cells[6] == f"{ev['after'] - ev['before']:+.3f}"
        assert cells[7] == f"{ev['after'] - m['calibration']['test']['after']['accuracy']:+.3f}"


def test_compare_refuses_what_it_cannot_compare(tmp_path, jsonl, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == f"error: no metrics.json in {tmp_path / 'empty'}; give the --out folder of a finished finetune run\n"
    for name, n_test in (("a", "8"), ("b", "6")):
        assert cli.main(["finetune", "--model", "tiny-gpt2", "--task", str(jsonl), "--steps", "1", "--batch-size", "4",
                         "--n-test", n_test, "--no-save-model", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "different tasks or test sets" in capsys.readouterr().err


def _finished(folder: Path, seed: int, accuracy: float, curve: list[tuple[int, float]], lr: float = 1e-3,
              beyond: float = 0.0, method: str = "mezo", config: dict | None = None) -> Path:
    """A hand-made metrics.json: test accuracy at the end, and the test loss at each logged forward count;
    ``config``: more run options recorded (e.g. ``{"top_lr": 1e-3}``)."""
    folder.mkdir(parents=True)
    metrics = {"method": method, "head_lr": None, "task": "t.jsonl", "forwards": curve[-1][0],
               "eval": {"metric": "accuracy", "n": 8, "before": 0.5, "after": accuracy, "loss_before": curve[0][1],
                        "loss_after": curve[-1][1]},
               "curve": [{"step": f // 2, "forwards": f, "test_loss": loss} for f, loss in curve],
               "gain": {"metric_beyond_calibration": beyond},
               "config": {"seed": seed, "lr": lr, "threads": 1, **(config or {})}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_compare_checks_the_test_examples_not_the_task_name(tmp_path, jsonl, capsys):
    """metrics.json holds the hash of the test split's examples (worked out here from the rows of the file, in the
    order a split of the same seed and sizes takes them). Runs of the same data under two names (a copy of the
    file) compare; runs of one name whose data changed between them are refused."""
    import hashlib

    from finetune.data.tasks import load_task

    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(jsonl.read_bytes())
    common = ["--model", "tiny-gpt2", "--steps", "1", "--batch-size", "4", "--n-test", "8", "--no-save-model"]
    for name, task in (("a", jsonl), ("b", copy)):
        assert cli.main(["finetune", "--task", str(task), *common, "--out", str(tmp_path / name)]) == 0
    test = load_task(str(jsonl), seed=0, n_train=1000, n_dev=500, n_test=8).test
    lines = {line: i for i, line in enumerate(jsonl.read_text().splitlines())}
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    picked = [rows[lines[json.dumps({"input": e.prompt, "options": list(e.options), "label": e.label})]] for e in test]
    want = hashlib.sha256(json.dumps([[r["input"], r["options"], r["label"], []] for r in picked],
                                     separators=(",", ":")).encode()).hexdigest()
    got = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b")}
    assert got["a"]["eval"]["sha256"] == got["b"]["eval"]["sha256"] == want and got["a"]["task"] != got["b"]["task"]
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0  # different names, the same split
    out = capsys.readouterr().out
    assert "| a | mezo |" in out and "| b | mezo |" in out
    text = jsonl.read_text().replace(". Answer:", "? Answer:")  # the same file name, other prompts
    jsonl.write_text(text)
    assert cli.main(["finetune", "--task", str(jsonl), *common, "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: {tmp_path / 'a'} and {tmp_path / 'c'} ran seed 0 on different test examples "
                                 "(their task data or split sizes differ); compare runs of one task and split\n")


def test_compare_accepts_two_task_names_only_where_every_seed_is_shown_alike(tmp_path, capsys):
    """Hand-made runs: two names pass only when each name ran the same seeds and a seed's runs share one hash; a
    run without a hash (written before 2026-12-06) leaves the names to decide."""
    def run(name, seed, task, sha):
        folder = _finished(tmp_path / name, seed, 0.5, [(0, 1.0), (2, 0.9)])
        m = json.loads((folder / "metrics.json").read_text())
        m["task"] = task
        if sha:
            m["eval"]["sha256"] = sha
        (folder / "metrics.json").write_text(json.dumps(m))
        return str(folder)

    a0, a1 = run("a0", 0, "x.jsonl", "h0"), run("a1", 1, "x.jsonl", "h1")
    b0, b1 = run("b0", 0, "packaged:x", "h0"), run("b1", 1, "packaged:x", "h1")
    old = run("old", 1, "packaged:x", None)
    assert cli.main(["compare", a0, a1, "--vs", b0, b1]) == 0
    capsys.readouterr()
    for argv in ([a0, a1, "--vs", b0, old], [a0, b1], [a0, a1, b0]):  # no hash; seeds 0 and 1 apart; b ran 0 only
        assert cli.main(["compare", *argv]) == 2
        assert "the runs are on different tasks or test sets" in capsys.readouterr().err
    other = run("other", 1, "packaged:x", "h2")  # both names ran both seeds, but seed 1's data differ
    assert cli.main(["compare", a0, a1, "--vs", b0, other]) == 2
    assert f"{a1} and {other} ran seed 1 on different test examples" in capsys.readouterr().err


def test_compare_pairs_arms_by_seed(tmp_path, capsys):
    """`compare A... --vs B...` pairs runs by their seed whatever the order the folders come in: the paired
    differences, their bootstrap interval (with three seeds each extreme is drawn thrice with probability 1/27,
    above the 2.5% tail, so the interval is exactly [smallest, largest difference]), and the passes each B run
    needs to reach its own A partner's final test loss."""
    a = {s: _finished(tmp_path / f"a{s}", s, acc, [(0, 1.0), (10, 0.9), (20, end)], beyond=0.01 * s)
         for s, acc, end in ((0, 0.50, 0.80), (1, 0.60, 0.70), (2, 0.70, 0.60))}
    b = {s: _finished(tmp_path / f"b{s}", s, acc, curve, lr=1e-2)
         for s, acc, curve in ((0, 0.60, [(0, 1.0), (10, 0.75), (20, 0.7)]),        # A's 0.80 reached at 10
                               (1, 0.80, [(0, 1.0), (10, 0.72), (20, 0.69)]),        # A's 0.70 reached at 20
                               (2, 1.00, [(0, 1.0), (10, 0.7), (20, 0.65)]))}        # A's 0.60: never
    assert cli.main(["compare", str(a[2]), str(a[0]), str(a[1]), "--vs", str(b[1]), str(b[2]), str(b[0])]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| mezo 0.0")}
    assert rows["mezo 0.001"][1:4] == ["0.600 ± 0.100", "0.7000 ± 0.1000", "+0.010"]
    # B - A per seed: accuracy +0.1, +0.2, +0.3; test loss -0.1, -0.01, +0.05
    assert rows["mezo 0.01"][1:] == ["0.800 ± 0.200", "0.6800 ± 0.0265", "+0.000", "+0.200 [+0.100, +0.300]",
                                     "-0.0200 [-0.1000, +0.0500]", "10, 20, –"]


def test_compare_refuses_arms_it_cannot_pair(tmp_path, capsys):
    """Every refusal is one line and comes before any table is printed."""
    a0 = _finished(tmp_path / "a0", 0, 0.5, [(0, 1.0), (2, 0.9)])
    a1 = _finished(tmp_path / "a1", 1, 0.5, [(0, 1.0), (2, 0.9)])
    b0 = _finished(tmp_path / "b0", 0, 0.5, [(0, 1.0), (2, 0.9)], lr=1e-2)
    b1 = _finished(tmp_path / "b1", 1, 0.5, [(0, 1.0), (2, 0.9)], lr=1e-1)
    again = _finished(tmp_path / "again", 0, 0.5, [(0, 1.0), (2, 0.9)])
    for argv, says in (([a0, a1, "--vs", b0], "ran seeds [0], the first arm [0, 1]"),
                       ([a0, again, "--vs", b0], "both ran seed 0"),
                       ([a0, a1, "--vs", b0, b1], "differ in lr (0.01 against 0.1)")):
        assert cli.main(["compare", *map(str, argv)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and says in err and err.count("\n") == 1, err


def test_compare_reads_an_option_newer_than_a_run_as_its_default(tmp_path, capsys):
    """A run recorded before --top-lr existed ran without the step: it pairs in one arm with a run that recorded
    --top-lr 0, not with one that took the step."""
    def run(name, seed, top_lr=None):
        config = None if top_lr is None else {"top_lr": top_lr}
        return str(_finished(tmp_path / name, seed, 0.5, [(0, 1.0), (2, 0.9)], config=config))

    old, off, on = run("old", 0), run("off", 1, 0.0), run("on", 1, 1e-3)
    b0, b1 = run("b0", 0), run("b1", 1)
    assert cli.main(["compare", old, off, "--vs", b0, b1]) == 0
    capsys.readouterr()
    assert cli.main(["compare", old, on, "--vs", b0, b1]) == 2
    assert "differ in top_lr (0.0 against 0.001)" in capsys.readouterr().err


def test_compare_labels_an_arm_by_its_top_block_step(tmp_path, capsys):
    """Two arms that differ only in --top-lr get different labels (they read alike before 2026-12-06, sixth
    session); an arm without the step is labelled as before."""
    def run(name, seed, top_lr):
        return str(_finished(tmp_path / name, seed, 0.5, [(0, 1.0), (2, 0.9)], config={"top_lr": top_lr}))

    assert cli.main(["compare", run("a0", 0, 0.0), run("a1", 1, 0.0), "--vs", run("b0", 0, 3e-4),
                     run("b1", 1, 3e-4)]) == 0
    labels = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| mezo")]
    assert labels == ["mezo 0.001", "mezo 0.001, top 0.0003"]


def test_compare_labels_an_arm_by_its_schedule(tmp_path, capsys):
    """Two arms that differ only in --schedule get different labels; a constant schedule is labelled as before."""
    def run(name, seed, schedule):
        return str(_finished(tmp_path / name, seed, 0.5, [(0, 1.0), (2, 0.9)], config={"schedule": schedule}))

    assert cli.main(["compare", run("a0", 0, "constant"), run("a1", 1, "constant"), "--vs", run("b0", 0, "linear"),
                     run("b1", 1, "linear")]) == 0
    labels = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| mezo")]
    assert labels == ["mezo 0.001", "mezo 0.001 linear"]
