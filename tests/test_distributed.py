"""Data-parallel ZO fine-tuning (two gloo ranks on CPU, started by torchrun) against one process, replay logs,
and the parameter checksum. Every multi-process run is bounded by a timeout."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cli
from finetune.common.errors import ZotuneError
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Example
from reference import FakeGroup, kill_meta_at, synthetic_examples
from test_head import _jsonl, one_token_examples

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for one torchrun (two ranks importing torch and transformers on a loaded machine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    """Same metrics (losses, evaluations, forward passes) and bit-identical weights."""
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    assert ma["train_loss"] == mb["train_loss"]
    assert ma["eval"] == mb["eval"] and ma["forwards"] == mb["forwards"]
    wa, wb = weights(a / "model"), weights(b / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def base_args(jsonl: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "4", "--lr", "1e-3",
            "--batch-size", "5", "--n-test", "6", "--threads", "1", "--out", str(out), *extra]


def test_shard_terms_equal_the_global_batch_rows():
    """The premise of bit-exact batch mode: a shard padded like its global batch gives each example the same
    loss terms as the global batch does (options of several tokens, of different lengths, and answers). Not for
    options of one token each: those are scored from the head's product at one position, whose rows differ in the
    last bit between 7 rows and 4 or 3 on our CPU, so there the terms agree to float rounding only."""
    torch.set_num_threads(1)
    several = synthetic_examples(7)  # ' yes' / ' no': 4 and 3 byte tokens
    longer = [Example(e.prompt, (" yes indeed", " no"), e.label) for e in several]
    gen = [Example(e.prompt, answers=(" seven " * (i % 3 + 1),)) for i, e in enumerate(several)]
    one_token = [Example(e.prompt, ("Y", "N"), e.label) for e in several]
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok)
    with torch.inference_mode():
        for batch in (several, longer, gen, one_token):
            whole = scorer.loss_terms(model, batch)
            parts = torch.cat([scorer.loss_terms(model, batch[:4], like=batch),
                               scorer.loss_terms(model, batch[4:], like=batch)])
            if batch is one_token:
                assert torch.allclose(whole, parts, rtol=0, atol=1e-5)
                continue
            assert torch.equal(whole, parts)
            assert torch.equal(scorer.reduce_terms(parts, batch), scorer.loss(model, batch))


def test_two_ranks_batch_mode_match_one_process_bit_for_bit(tmp_path, jsonl):
    """mezo with momentum, batch 5 over 2 ranks (shards of 3 and 2): the same losses, evaluations and weights as
    one process; rank 0's replay log rebuilds the weights."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(base_args(jsonl, one, "--optimizer", "momentum", "--weight-decay", "0.1")) == 0
    run = torchrun(["cli.py", *base_args(jsonl, two, "--optimizer", "momentum", "--weight-decay", "0.1",
                                         "--save-log", "--check-every", "1")])
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_run(one, two)
    assert json.loads((two / "metrics.json").read_text())["parallel"]["world_size"] == 2
    assert cli.main(["replay", str(two / "log.jsonl"), "--model", "tiny-llama", "--out", str(tmp_path / "re")]) == 0
    replayed, trained = weights(tmp_path / "re"), weights(two / "model")
    assert all(torch.equal(replayed[k], trained[k]) for k in trained)


def test_two_ranks_tuner_run_matches_one_process_bit_for_bit(tmp_path, jsonl):
    """A tuner's features see the global losses: its scales, hence the whole run, are the single process's."""
    from checkpoints import Tuner
    from pertnn import PertNNConfig

    model, _ = load_model("tiny-llama")
    tuner = Tuner.for_model(model, "tiny-llama", PertNNConfig(hidden=8), seed=3)
    tuner.bank.randomize_output_(torch.Generator().manual_seed(3))
    path = tuner.save_pretrained(tmp_path / "t.safetensors")
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(base_args(jsonl, one, "--tuner", str(path))) == 0
    run = torchrun(["cli.py", *base_args(jsonl, two, "--tuner", str(path))])
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_run(one, two)


@pytest.mark.parametrize("head", [["--head-lr", "1e-2"], ["--head-race", "1e-3,1e-1"],
                                  ["--method", "exact", "--head-lr", "1e-2"]], ids=["head-lr", "head-race", "exact"])
def test_two_ranks_with_the_head_step_match_one_process(tmp_path, head):
    """Batch mode with the head step (or a head race, or the head step alone: --method exact): each rank's passes see
    its shard (3 and 2 of 5 examples), the head's input and option logits are all-gathered, and every rank steps the
    rows as one process does. The ranks agree bit for bit after every step (--check-every 1). With one-token options
    the head's matrix product over 3 or 2 rows differs from the one over 5 in the last bit on our CPUs (the premise
    test above is bit-exact for longer options only), and Adam's normalised step carries that into the rows (about
    1e-6 relative in the losses after four steps on an AVX-512 CPU), so the run is compared with one process to 1e-5,
    against head rows that move by about 1e-2 per step: a rank that stepped on its shard alone, or a mis-scaled
    gradient, is off by far more."""
    task = Path(_jsonl(tmp_path, one_token_examples(60)))
    one, two, mezo = tmp_path / "one", tmp_path / "two", tmp_path / "mezo"

    def args(out: Path, *extra: str) -> list[str]:
        a = base_args(task, out, *extra)
        if "exact" in extra:  # --method exact takes no --lr (it makes no ZO step)
            i = a.index("--lr")
            del a[i:i + 2]
        return a

    assert cli.main(args(one, *head)) == 0
    run = torchrun(["cli.py", *args(two, *head, "--check-every", "1")])
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (json.loads((x / "metrics.json").read_text()) for x in (one, two))
    assert b["parallel"]["world_size"] == 2 and a["forwards"] == b["forwards"] == (4 if "exact" in head else 8)
    assert a["head_lr"] == b["head_lr"] > 0 and (a.get("head_race") or {}).get("steps_active") == \
        (b.get("head_race") or {}).get("steps_active")
    assert torch.allclose(torch.tensor(a["train_loss"]), torch.tensor(b["train_loss"]), rtol=1e-5, atol=0)
    assert cli.main(base_args(task, mezo)) == 0  # the same run without the head step
    wa, wb, wm = weights(one / "model"), weights(two / "model"), weights(mezo / "model")
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() <= 1e-5, k
    assert max((wa[k] - wm[k]).abs().max() for k in wa) > 1e-3  # the head step moved the rows


@pytest.mark.parametrize("extra", [("--method", "nspsa", "--q", "3", "--optimizer", "adam"),
                                   ("--method", "gv", "--candidates", "3"),
                                   ("--method", "ldsd", "--ldsd-k", "3", "--optimizer", "momentum")])
def test_two_ranks_directions_mode_match_one_process_bit_for_bit(tmp_path, jsonl, extra):
    """Directions (n-SPSA, q = 3) or candidates (gv, ldsd: 3) split over 2 ranks (2 + 1), each on the whole batch."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(base_args(jsonl, one, *extra)) == 0
    run = torchrun(["cli.py", *base_args(jsonl, two, *extra, "--dp-mode", "directions")])
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_run(one, two)


def test_directions_mode_is_refused_where_unsupported(tmp_path, jsonl):
    run = torchrun(["cli.py", *base_args(jsonl, tmp_path / "r", "--dp-mode", "directions")])  # mezo: q = 1
    assert run.returncode != 0  # torchrun exits 1 when its ranks exit 2
    assert run.stderr.count("error: --dp-mode directions needs several directions per step (--q >= 2, now 1); "
                            "use --dp-mode batch or --method nspsa") == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()


@pytest.mark.parametrize("method", ["sparse-mezo", "lozo", "bcd", "fzoo", "hizoo"])
def test_directions_mode_is_refused_for_the_baselines(method):
    """The baselines take their own steps: splitting directions across ranks is refused in one line."""
    from finetune.data.models import load_model
    from finetune.trainer import FinetuneConfig, check_parallel, make_run_optimizer

    cfg = FinetuneConfig(model="tiny-llama", method=method, lr=1e-3)
    opt = make_run_optimizer(cfg, load_model("tiny-llama")[0])
    with pytest.raises(ZotuneError, match=f"--dp-mode directions is not supported for --method {method}"):
        check_parallel(cfg, opt, FakeGroup("directions"))


def test_without_torchrun_no_process_group_is_created(tmp_path, jsonl):
    assert cli.main(base_args(jsonl, tmp_path / "r", "--dp-mode", "directions", "--no-save-model")) == 0
    assert not torch.distributed.is_initialized()
    assert "parallel" not in json.loads((tmp_path / "r" / "metrics.json").read_text())


def test_a_rank_out_of_step_stops_every_rank(tmp_path):
    """Rank 1 changes one weight during step 3; with --check-every 1 both ranks stop after step 3."""
    run = torchrun([str(ROOT / "tests" / "dp_worker.py"), "corrupt", str(tmp_path)])
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())["outcome"]
        assert outcome.startswith("the ranks' parameters differ after step 3 (1 block(s), first model.embed_tokens"), outcome


# --- meta-training ------------------------------------------------------------------------------------


def meta_args(tasks: list[str], out: Path, *extra: str) -> list[str]:
    return ["meta-train", "--model", "tiny-llama", "--tasks", ",".join(tasks), "--steps", "4", "--batch-size", "5",
            "--hidden", "8", "--restart-every", "3", "--threads", "1", "--out", str(out), *extra]


@pytest.mark.parametrize("unroll", ["1", "2"])
def test_two_ranks_meta_train_like_one_process(tmp_path, tasks, unroll):
    """The SPSA losses of the first step are bit-identical (gathered terms); the gradients are summed over two
    shards, which rounds differently from one backward over the batch, so later steps agree to float32
    rounding: measured 1.2e-7 (K = 1) and 2.9e-7 (K = 2) relative on the losses and 7.5e-8 on the tuner's
    weights after 4 Adam steps; asserted with margin: relative 1e-5 and absolute 1e-6."""
    from meta.train import log_path
    from checkpoints import Tuner

    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert cli.main(meta_args(tasks, one, "--unroll", unroll)) == 0
    run = torchrun(["cli.py", *meta_args(tasks, two, "--unroll", unroll, "--check-every", "1")])
    assert run.returncode == 0, run.stderr[-3000:]
    la, lb = (json.loads(log_path(p).read_text()) for p in (one, two))
    assert la[0]["loss"] == lb[0]["loss"]
    for ra, rb in zip(la, lb):
        assert ra["task"] == rb["task"]
        for key in ("loss", "meta_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5), (ra, rb)
    ta, tb = Tuner.from_pretrained(one), Tuner.from_pretrained(two)
    for (name, a), (_, b) in zip(ta.bank.named_parameters(), tb.bank.named_parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name
    assert any(not torch.equal(a, b) for a, b in zip(ta.bank.parameters(), Tuner.for_model(
        load_model("tiny-llama")[0], "tiny-llama").bank.parameters()))  # the bank moved


def test_meta_resume_refuses_another_number_of_ranks(tmp_path, tasks, monkeypatch):
    from meta.train import snapshot_path

    out = tmp_path / "t.safetensors"
    kill_meta_at(monkeypatch, 2)
    with pytest.raises(SystemExit):
        cli.main(meta_args(tasks, out, "--checkpoint-every", "2"))
    assert snapshot_path(out).exists()
    run = torchrun(["cli.py", *meta_args(tasks, out, "--checkpoint-every", "2", "--resume")])
    assert run.returncode != 0
    assert run.stderr.count("error: cannot resume: the interrupted run had 1 rank(s), this one 2;") == 2
    assert snapshot_path(out).exists() and not out.exists()


def test_two_rank_meta_training_resumes_to_the_same_tuner(tmp_path, tasks):
    """Killed after meta step 2 (checkpoint at 2) and resumed on 2 ranks: the uninterrupted 2-rank run's tuner,
    bit for bit (same ranks, same summation order)."""
    from checkpoints import Tuner
    from meta.train import snapshot_path

    full = tmp_path / "full.safetensors"
    run = torchrun(["cli.py", *meta_args(tasks, full)])
    assert run.returncode == 0, run.stderr[-3000:]
    worker = str(ROOT / "tests" / "dp_worker.py")
    run = torchrun([worker, "meta-killed", str(tmp_path), ",".join(tasks)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert snapshot_path(tmp_path / "t.safetensors").exists() and not (tmp_path / "t.safetensors").exists()
    run = torchrun([worker, "meta-resume", str(tmp_path), ",".join(tasks)])
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = Tuner.from_pretrained(full), Tuner.from_pretrained(tmp_path / "t.safetensors")
    for (name, x), (_, y) in zip(a.bank.named_parameters(), b.bank.named_parameters()):
        assert torch.equal(x, y), name


def test_finetune_resume_refuses_another_sharding_and_resumes_on_two_ranks(tmp_path, jsonl, monkeypatch):
    """A 1-process run killed after a checkpoint: resuming it on 2 ranks in batch mode is refused (the losses
    could round differently); in directions mode (whole batches) it resumes and ends as the uninterrupted run."""
    import finetune.trainer as trainer

    extra = ("--method", "nspsa", "--q", "2", "--checkpoint-every", "2")
    full, out = tmp_path / "full", tmp_path / "run"
    assert cli.main(base_args(jsonl, full, *extra)) == 0
    original, calls = trainer.step_closure, {"n": 0}

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(trainer, "step_closure", dying)
    with pytest.raises(SystemExit):
        cli.main(base_args(jsonl, out, *extra))
    run = torchrun(["cli.py", *base_args(jsonl, out, *extra, "--resume")])
    assert run.returncode != 0
    assert run.stderr.count("error: cannot resume: the interrupted run split each batch into 1 shard(s), this one "
                            "into 2, which can change the losses in the last bits; resume it in one process") == 2
    run = torchrun(["cli.py", *base_args(jsonl, out, *extra, "--resume", "--dp-mode", "directions")])
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_run(full, out)


def test_fo_under_torchrun_is_refused_in_one_line(tmp_path, jsonl):
    """--method fo does not all-reduce its gradients: under torchrun every rank refuses it on one line, before
    any folder is made."""
    run = torchrun(["cli.py", *base_args(jsonl, tmp_path / "r", "--method", "fo")])
    assert run.returncode != 0
    line = ("error: --method fo does not run data-parallel (its gradients are not all-reduced across ranks); "
            "run it without torchrun")
    assert run.stderr.count(line + "\n") == 2, run.stderr[-3000:]
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()


def test_error_line_is_one_write(monkeypatch, capsys):
    """Ranks under torchrun share one stderr pipe: each error line (with its newline) must reach it in one write, or
    two ranks' lines interleave. print() writes the text and the newline separately; this fails with it."""
    import cli

    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    assert cli.main(["finetune", "--steps", "0", "--out", "unused"]) == 2
    assert len(writes) == 1 and writes[0].startswith("error: ") and writes[0].endswith("\n"), writes


def test_check_parallel_refuses_fo(jsonl):
    """The same refusal when train() is called with a data-parallel context directly."""
    from finetune.trainer import FO_NOT_PARALLEL, FinetuneConfig, check_parallel

    with pytest.raises(ZotuneError, match="--method fo does not run data-parallel"):
        check_parallel(FinetuneConfig(model="tiny-llama", method="fo"), None, FakeGroup("batch"))
    assert "\n" not in FO_NOT_PARALLEL
