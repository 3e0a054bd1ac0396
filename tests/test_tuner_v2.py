"""Tuner v2: a tuner that carries a head step (format 3), applied by fine-tuning and chosen by meta-train-head; and
one that also carries the top-block step (format 5).

The references: an untrained tuner with a head step at lr h must fine-tune exactly as ``--method mezo --head-lr h``
(and with ``--head-lr 0`` exactly as MeZO), bit for bit; the head lr meta-train-head writes must be the grid's
argmin of the final dev losses recomputed here from its benches' own files."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cli
from checkpoints import Tuner
from checkpoints.artifact import FORMAT_VERSION
from checkpoints.inspect import inspect_text
from finetune.common.errors import ZotuneError
from finetune.data.models import load_model
from meta.head import bench_folder
from reference import FakeGroup, bad, kill_at_call
from test_head import _jsonl, one_token_examples

BASE = ["--model", "tiny-llama", "--batch-size", "4", "--n-test", "8", "--n-dev", "8", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    model, _ = load_model("tiny-llama")
    path = tmp_path_factory.mktemp("tuners") / "untrained.safetensors"
    return Tuner.for_model(model, "tiny-llama").save_pretrained(path)


def test_a_head_step_is_format_3_and_round_trips(tmp_path, untrained):
    tuner = Tuner.from_pretrained(untrained)
    assert tuner.head is None and tuner.head_lr == 0
    path = tuner.with_head(3e-4).save_pretrained(tmp_path / "v2.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "3" and json.loads(meta["zotune"])["head"] == {"lr": 3e-4}
    back = Tuner.from_pretrained(path)
    assert back.head_lr == 3e-4 and back.metadata() == json.loads(json.dumps(tuner.with_head(3e-4).metadata()))
    assert tuner.with_head(0).head is None  # 0 is no head step: the file stays at format 1
    with safe_open(str(untrained), framework="pt") as f:
        assert f.metadata()["format_version"] == "1"


def test_bad_head_metadata_is_refused_in_one_line(tmp_path, untrained):
    path = Tuner.from_pretrained(untrained).with_head(1e-3).save_pretrained(tmp_path / "v2.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for head, message in [({"lr": -1}, "not a finite number"), ({"lr": "fast"}, "not a finite number"),
                          ({"lr": 1e-3, "betas": [0.9, 0.99]}, "upgrade zotune"), ([1e-3], "expected dict")]:
        doc = json.loads(meta["zotune"])
        doc["head"] = head
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "zotune": json.dumps(doc)})
        with pytest.raises(ZotuneError, match=message):
            Tuner.from_pretrained(tmp_path / "bad.safetensors")
    shipped = Tuner.from_pretrained(cli.Path(cli.__file__).parent / "checkpoints/pretrained/smollm2-135m.safetensors")
    assert shipped.head is None  # a format-1 file still loads, without a head step


def test_a_head_race_is_format_4_round_trips_and_bad_races_are_refused(tmp_path, untrained):
    tuner = Tuner.from_pretrained(untrained).with_head_race([1e-3, 1e-4, 3e-4])
    path = tuner.save_pretrained(tmp_path / "race.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format_version"] == "4" and json.loads(meta["zotune"])["head"] == {"race": [1e-4, 3e-4, 1e-3]}
    back = Tuner.from_pretrained(path)
    assert back.head_lrs == [1e-4, 3e-4, 1e-3] and back.head_lr == 1e-4
    assert back.head_text == "a race of lrs 0.0001, 0.0003, 0.001"
    for head, message in [({"race": [1e-3]}, "two or more"), ({"race": [1e-3, 1e-3]}, "two or more"),
                          ({"race": [0, 1e-3]}, "two or more"), ({"race": "1e-3,1e-2"}, "two or more"),
                          ({"race": [1e-3, 1e-2], "lr": 1e-3}, "one of 'lr' and 'race'")]:
        doc = json.loads(meta["zotune"])
        doc["head"] = head
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "zotune": json.dumps(doc)})
        with pytest.raises(ZotuneError, match=message):
            Tuner.from_pretrained(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata={**meta, "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(ZotuneError, match="upgrade zotune"):
        Tuner.from_pretrained(tmp_path / "new.safetensors")


def test_a_tuner_with_a_head_race_fine_tunes_as_mezo_with_head_race_bit_for_bit(tmp_path, untrained):
    task = _jsonl(tmp_path, one_token_examples(60))
    race = Tuner.from_pretrained(untrained).with_head_race([1e-3, 5e-2]).save_pretrained(tmp_path / "race.safetensors")
    runs = {}
    for name, extra in (("tuned", ["--tuner", str(race)]), ("mezo", ["--method", "mezo", "--head-race", "1e-3,5e-2"])):
        out = tmp_path / name
        assert cli.main(["finetune", *BASE, "--task", task, "--steps", "8", *extra, "--out", str(out)]) == 0
        runs[name] = (json.loads((out / "metrics.json").read_text()), load_model(str(out / "model"))[0])
    (a, ma), (b, mb) = runs["tuned"], runs["mezo"]
    assert a["head_race"] == b["head_race"] and a["head_race"]["lrs"] == [1e-3, 5e-2]
    assert a["train_loss"] == b["train_loss"] and a["eval"] == b["eval"]
    for (k, v), w in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(v, w), k


def _finetune(tmp_path, name, task, *extra, capsys):
    out = tmp_path / name
    assert cli.main(["finetune", *BASE, "--task", task, "--steps", "5", "--eval-every", "2", *extra,
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    said = capsys.readouterr().out  # the closing line says whether the head step ran
    assert ("with the head step at lr 0.02" in said) == (metrics["head_lr"] == 2e-2), said
    model, _ = load_model(str(out / "model"))
    return metrics, model


def _same(a, b):
    ma, wa = a
    mb, wb = b
    for key in ("train_loss", "eval", "eval_history", "curve", "head_lr"):
        assert ma[key] == mb[key], key
    for (k, v), w in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("precision", [[], ["--autocast", "bf16"]], ids=["fp32", "autocast-bf16"])
def test_a_tuner_with_a_head_step_fine_tunes_as_mezo_with_head_lr_bit_for_bit(tmp_path, untrained, capsys, precision):
    # (the report's held-out runs used --autocast bf16 and --method mezo --head-lr: this is what makes them tuner v2's)
    task = _jsonl(tmp_path, one_token_examples(60))
    v2 = Tuner.from_pretrained(untrained).with_head(2e-2).save_pretrained(tmp_path / "v2.safetensors")
    tuned = _finetune(tmp_path, "tuned", task, "--tuner", str(v2), *precision, capsys=capsys)
    mezo_head = _finetune(tmp_path, "mezo-head", task, "--method", "mezo", "--head-lr", "2e-2", *precision,
                          capsys=capsys)
    assert tuned[0]["head_lr"] == 2e-2
    _same(tuned, mezo_head)
    off = _finetune(tmp_path, "off", task, "--tuner", str(v2), "--head-lr", "0", *precision, capsys=capsys)  # = MeZO
    mezo = _finetune(tmp_path, "mezo", task, "--method", "mezo", *precision, capsys=capsys)
    assert off[0]["head_lr"] == 0
    _same(off, mezo)
    assert tuned[0]["train_loss"] != mezo[0]["train_loss"]  # the head step did act


def test_a_tuners_head_step_is_in_its_log_and_replays_bit_for_bit(tmp_path, untrained):
    task = _jsonl(tmp_path, one_token_examples(40))
    v2 = Tuner.from_pretrained(untrained).with_head(1e-2).save_pretrained(tmp_path / "v2.safetensors")
    out = tmp_path / "run"
    assert cli.main(["finetune", *BASE, "--task", task, "--tuner", str(v2), "--steps", "3", "--save-log",
                     "--out", str(out)]) == 0
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[1:]]
    assert all(len(s["head"]) == 2 for s in steps)  # the rows of Y and N, every step
    assert cli.main(["replay", str(out / "log.jsonl"), "--model", "tiny-llama", "--out", str(tmp_path / "re")]) == 0
    trained, replayed = (load_file(str(p)) for p in (out / "model" / "model.safetensors",
                                                    tmp_path / "re" / "model.safetensors"))
    assert all(torch.equal(trained[k], replayed[k]) for k in trained)


def test_inspect_shows_the_head_step(tmp_path, untrained):
    assert "head step  none" in inspect_text(untrained)
    tuner = Tuner.from_pretrained(untrained).with_head(3e-4)
    tuner.provenance = {"head_selection": {"tasks": ["t.jsonl"], "forwards": 10, "seeds": [0], "lr": 1e-3,
                                           "dev_loss": {"0": 0.7, "0.0003": 0.6}}}
    text = inspect_text(tuner.save_pretrained(tmp_path / "v2.safetensors"))
    line = next(x for x in text.splitlines() if x.startswith("head step"))
    assert "lr 0.0003" in line and "t.jsonl" in line and "0.0003: 0.6000" in line


def test_inspect_shows_a_head_race(tmp_path, untrained):
    race = Tuner.from_pretrained(untrained).with_head_race([3e-4, 1e-3])
    text = inspect_text(race.save_pretrained(tmp_path / "race.safetensors"))
    line = next(x for x in text.splitlines() if x.startswith("head step"))
    assert "Adam at a race of lrs 0.0003, 0.001 (the rows of the lr that fits held-back" in line


def test_check_parallel_reads_the_head_step_of_the_tuner_a_config_names(tmp_path, untrained):
    """Called without the run's head lrs, the data-parallel check reads them from the tuner file the config names:
    in directions mode a tuner's head step is refused in one line, the same tuner without it passes; in batch mode
    both pass."""
    from finetune.trainer import FinetuneConfig, check_parallel

    v2 = Tuner.from_pretrained(untrained).with_head(3e-4).save_pretrained(tmp_path / "v2.safetensors")
    with_head = FinetuneConfig(model="tiny-llama", method="tuner", tuner=str(v2))
    without = FinetuneConfig(model="tiny-llama", method="tuner", tuner=str(untrained))
    with pytest.raises(ZotuneError, match="runs data-parallel in --dp-mode batch only"):
        check_parallel(with_head, opt=None, dp=FakeGroup("directions"))
    check_parallel(with_head, opt=None, dp=FakeGroup("batch"))
    check_parallel(without, opt=None, dp=FakeGroup("batch"))


def _select(tmp_path, task, out, *extra):
    return ["meta-train-head", "--model", "tiny-llama", "--tasks", task, "--head-lrs", "0,2e-2", "--lr", "1e-3",
            "--batch-size", "4", "--n-dev", "8", "--n-test", "8", "--forwards", "12", "--eval-points", "2",
            "--seeds", "0,1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / out), *extra]


def test_meta_train_head_writes_the_grids_argmin_of_final_dev_loss(tmp_path, monkeypatch, capsys):
    task = _jsonl(tmp_path, one_token_examples(60))
    assert cli.main(_select(tmp_path, task, "v2.safetensors")) == 0
    losses = {}
    for h in (0.0, 2e-2):  # recomputed from the benches' own files, one per seed
        runs = [r for s in (0, 1) for r in json.loads((bench_folder(tmp_path / "work", task, h, s) / "bench.json")
                                                       .read_text())["runs"]]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["method"] == "tuner" for r in runs)
        assert all(r["forwards"] == 12 and r["head_lr"] == h for r in runs)
        losses[h] = sum(r["curve"][-1]["dev_loss"] for r in runs) / 2
    best = min(losses, key=losses.get)
    v2 = Tuner.from_pretrained(tmp_path / "v2.safetensors")
    assert v2.head_lr == best and v2.recommended["lr"] == 1e-3
    sel = v2.provenance["head_selection"]
    assert sel["dev_loss"] == {"0": pytest.approx(losses[0.0]), "0.02": pytest.approx(losses[2e-2])}
    assert f"head lr {best:g}" in capsys.readouterr().out
    # the same command again: the output is not overwritten
    assert "already exists" in bad(capsys, _select(tmp_path, task, "v2.safetensors"))
    # a second output from the same work folder reads the finished benches instead of rerunning them
    from finetune import bench as bench_module

    def no_bench(*a, **k):
        raise AssertionError("a finished bench was rerun")

    monkeypatch.setattr(bench_module, "bench", no_bench)
    assert cli.main(_select(tmp_path, task, "again.safetensors")) == 0
    assert Tuner.from_pretrained(tmp_path / "again.safetensors").head_lr == best
    # a search with other run options must not read those benches as its own dev losses
    for extra in (["--eps", "2e-3"], ["--lr", "2e-3"]):
        err = bad(capsys, [*_select(tmp_path, task, "other.safetensors"), *extra])
        assert "give this search its own --work" in err and extra[0][2:] in err, err
    assert not (tmp_path / "other.safetensors").exists()
    # the tuner counts by its bytes: a copy of the work folder's untrained tuner reads the benches, another is refused
    import shutil

    shutil.copy(tmp_path / "work" / "untrained-tuner.safetensors", tmp_path / "copy.safetensors")
    copy = str(tmp_path / "copy.safetensors")
    assert cli.main([*_select(tmp_path, task, "from-copy.safetensors"), "--tuner", copy]) == 0
    model, _ = load_model("tiny-llama")
    other = Tuner.for_model(model, "tiny-llama", seed=1).save_pretrained(tmp_path / "seed1.safetensors")
    err = bad(capsys, [*_select(tmp_path, task, "other.safetensors"), "--tuner", str(other)])
    assert "tuner=" in err and "give this search its own --work" in err
    from meta.selection import final_dev_loss

    assert final_dev_loss({"diverged": "loss nan"}) == math.inf


def test_meta_train_head_chooses_the_zo_lr_with_the_head_lr(tmp_path, monkeypatch, capsys):
    """--lrs: every (ZO lr, head lr) pair gets its benches (under lr-<lr>), the pair with the lowest mean final dev
    loss wins, recomputed here from the benches' own files, and its ZO lr becomes the recommended lr."""
    task = _jsonl(tmp_path, one_token_examples(60))

    def argv(out):  # _select's options with a grid of ZO lrs instead of its --lr 1e-3
        args = [*_select(tmp_path, task, out), "--lrs", "1e-3,3e-3"]
        at = args.index("--lr")
        return args[:at] + args[at + 2:]

    calls = _benches_run(monkeypatch)
    assert cli.main(argv("grid.safetensors")) == 0
    assert calls == [(h, [s]) for lr in (1e-3, 3e-3) for h in (0.0, 2e-2) for s in (0, 1)]
    losses = {}
    for lr in (1e-3, 3e-3):
        for h in (0.0, 2e-2):
            folder = bench_folder(tmp_path / "work", task, h, 0, lr=lr)
            assert folder.parent.parent.name == f"lr-{lr:g}"
            runs = [r for s in (0, 1) for r in json.loads((bench_folder(tmp_path / "work", task, h, s, lr=lr)
                                                           / "bench.json").read_text())["runs"]]
            assert all(r["lr"] == lr and r["head_lr"] == h and r["forwards"] == 12 for r in runs)
            losses[(lr, h)] = sum(r["curve"][-1]["dev_loss"] for r in runs) / 2
    best_lr, best_h = min(losses, key=losses.get)
    assert len(set(losses.values())) == 4  # the lrs change the runs: the choice is a real one
    chosen = Tuner.from_pretrained(tmp_path / "grid.safetensors")
    assert chosen.recommended["lr"] == best_lr and chosen.head_lr == best_h
    sel = chosen.provenance["head_selection"]
    assert sel["lr"] == best_lr and sel["lrs"] == [1e-3, 3e-3] and sel["chosen"] == best_h
    assert sel["dev_loss"] == {f"lr {lr:g}, head {h:g}": pytest.approx(v) for (lr, h), v in losses.items()}
    out = capsys.readouterr().out
    assert f"recommended lr {best_lr:g}" in out and "lr 0.003, head 0.02: " in out
    assert f"the ZO lr chosen with it from 0.001, 0.003: {best_lr}" in inspect_text(tmp_path / "grid.safetensors")
    # the same grid again reads every bench; one lr and a grid at once are refused
    calls.clear()
    assert cli.main(argv("again.safetensors")) == 0 and not calls
    assert "not both" in bad(capsys, [*argv("x.safetensors"), "--lr", "1e-3"])
    assert "--lrs must be distinct" in bad(capsys, [*argv("x.safetensors"), "--lrs", "1e-3,1e-3"])
    assert not (tmp_path / "x.safetensors").exists()


def test_meta_train_head_with_a_race_candidate_writes_the_argmin(tmp_path, capsys):
    """--race adds a head race to the grid: its benches are recomputed here like the single lrs', and the tuner
    carries whichever has the lowest mean final dev loss (here the race, against no head step at all)."""
    task = _jsonl(tmp_path, one_token_examples(60))
    argv = [*_select(tmp_path, task, "race.safetensors"), "--head-lrs", "0", "--race", "1e-3,1e-4"]
    assert cli.main(argv) == 0
    losses = {}
    for name, head in (("0", 0.0), ("race 0.0001,0.001", (1e-4, 1e-3))):
        runs = [r for s in (0, 1) for r in json.loads((bench_folder(tmp_path / "work", task, head, s) / "bench.json")
                                                       .read_text())["runs"]]
        assert all(r["forwards"] == 12 and r["method"] == "tuner" for r in runs)
        assert all((r.get("head_race") or {}).get("lrs") == ([1e-4, 1e-3] if name != "0" else None) for r in runs)
        losses[name] = sum(r["curve"][-1]["dev_loss"] for r in runs) / 2
    assert bench_folder(tmp_path / "work", task, (1e-4, 1e-3), 0).parent.name == "head-race-0.0001-0.001"
    chosen = Tuner.from_pretrained(tmp_path / "race.safetensors")
    sel = chosen.provenance["head_selection"]
    assert sel["dev_loss"] == {k: pytest.approx(v) for k, v in losses.items()}
    assert losses["race 0.0001,0.001"] < losses["0"]  # the case this test is for
    assert chosen.head_lrs == [1e-4, 1e-3] and sel["chosen"] == [1e-4, 1e-3]
    assert "head a race of lrs 0.0001, 0.001" in capsys.readouterr().out
    assert "--race" in bad(capsys, [*argv[:-1], "1e-3", "--out", str(tmp_path / "x.safetensors")])
    # a finished race bench made before races were scored on held-back examples is not read as today's
    done = bench_folder(tmp_path / "work", task, (1e-4, 1e-3), 1) / "bench.json"
    report = json.loads(done.read_text())
    del report["runs"][0]["head_race"]["held_back"]
    done.write_text(json.dumps(report))
    out = tmp_path / "again.safetensors"
    assert "older rule" in bad(capsys, [*argv[:argv.index("--out")], "--out", str(out), *argv[argv.index("--out") + 2:]])
    assert not out.exists()


def _benches_run(monkeypatch) -> list[tuple[float, list[int]]]:
    """From now on, (head lr, seeds) of every bench that meta-train-head starts, in order; they still run."""
    from finetune import bench as bench_module

    calls, real_bench = [], bench_module.bench
    monkeypatch.setattr(bench_module, "bench", lambda cfg, *a, **k: calls.append((cfg.base.head_lr, cfg.seeds))
                        or real_bench(cfg, *a, **k))
    return calls


def test_meta_train_head_resumes_after_a_kill_with_the_same_result(tmp_path, monkeypatch, capsys):
    task = _jsonl(tmp_path, one_token_examples(60))
    straight = tmp_path / "straight"
    straight.mkdir()
    assert cli.main(_select(straight, task, "v2.safetensors")) == 0
    killed = tmp_path / "killed"
    killed.mkdir()
    # 2 loss passes a step, 6 steps a run, one run (seed) a bench: pass 43 is in the fourth bench (head lr 2e-2,
    # seed 1), with the three before it finished: the rerun reads those instead of running them again
    real_loss = kill_at_call(monkeypatch, 3 * 2 * 6 + 2 * 3 + 1)
    with pytest.raises(SystemExit) as stop:
        cli.main(_select(killed, task, "v2.safetensors"))
    assert stop.value.code == 130 and "rerun the same command" in capsys.readouterr().err
    assert not (killed / "v2.safetensors").exists()
    finished = [bench_folder(killed / "work", task, h, s) for h, s in ((0.0, 0), (0.0, 1), (2e-2, 0))]
    assert all((f / "bench.json").exists() for f in finished)
    assert not (bench_folder(killed / "work", task, 2e-2, 1) / "bench.json").exists()
    from finetune.data.scoring import TaskScorer

    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    kept = [(f / "bench.json").read_bytes() for f in finished]
    calls = _benches_run(monkeypatch)
    assert cli.main(_select(killed, task, "v2.safetensors")) == 0
    assert calls == [(2e-2, [1])] and kept == [(f / "bench.json").read_bytes() for f in finished]
    a = Tuner.from_pretrained(straight / "v2.safetensors").provenance["head_selection"]
    b = Tuner.from_pretrained(killed / "v2.safetensors").provenance["head_selection"]
    assert a["dev_loss"] == b["dev_loss"] and a["chosen"] == b["chosen"]


def test_meta_train_head_with_more_seeds_runs_only_the_new_benches(tmp_path, monkeypatch):
    task = _jsonl(tmp_path, one_token_examples(60))
    one_seed = [*_select(tmp_path, task, "s0.safetensors"), "--seeds", "0"]
    assert cli.main(one_seed) == 0
    assert Tuner.from_pretrained(tmp_path / "s0.safetensors").provenance["head_selection"]["seeds"] == [0]
    kept = {h: (bench_folder(tmp_path / "work", task, h, 0) / "bench.json").read_bytes() for h in (0.0, 2e-2)}
    calls = _benches_run(monkeypatch)
    assert cli.main(_select(tmp_path, task, "s01.safetensors")) == 0  # --seeds 0,1
    assert calls == [(0.0, [1]), (2e-2, [1])]
    assert kept == {h: (bench_folder(tmp_path / "work", task, h, 0) / "bench.json").read_bytes() for h in (0.0, 2e-2)}
    assert Tuner.from_pretrained(tmp_path / "s01.safetensors").provenance["head_selection"]["seeds"] == [0, 1]


def test_meta_train_head_refusals(tmp_path, untrained, capsys):
    task = _jsonl(tmp_path, one_token_examples(40))
    v2 = Tuner.from_pretrained(untrained).with_head(1e-3).save_pretrained(tmp_path / "v2.safetensors")
    assert "head step already" in bad(capsys, _select(tmp_path, task, "x.safetensors", "--tuner", str(v2)))
    assert ".safetensors" in bad(capsys, _select(tmp_path, task, "x.pt"))
    assert "--head-lrs" in bad(capsys, [*_select(tmp_path, task, "y.safetensors"), "--head-lrs", "1e-3,1e-3"])
    assert "--n-dev" in bad(capsys, [*_select(tmp_path, task, "z.safetensors"), "--n-dev", "0"])
    assert not list(tmp_path.glob("*.safetensors.*")) and not (tmp_path / "x.safetensors").exists()
    fresh = tmp_path / "fresh"  # a wrong --out is refused before the untrained tuner is written into --work
    fresh.mkdir()
    (fresh / "taken.safetensors").write_text("")
    for out in ("y.pt", "taken.safetensors"):
        bad(capsys, _select(fresh, task, out))
        assert not (fresh / "work").exists()


def test_a_bench_without_head_lr_merges_with_one_that_recorded_0(tmp_path, capsys):
    # benches written before --head-lr could be unset recorded 0.0; without method tuner, unset means the same
    task = _jsonl(tmp_path, one_token_examples(40))
    common = ["bench", "--model", "tiny-llama", "--task", task, "--forwards", "4", "--batch-size", "4", "--n-test",
              "6", "--n-dev", "6", "--eval-points", "2", "--methods", "mezo", "--lr", "1e-3"]
    assert cli.main([*common, "--seeds", "0", "--out", str(tmp_path / "new")]) == 0
    assert cli.main([*common, "--seeds", "1", "--out", str(tmp_path / "old")]) == 0
    old = tmp_path / "old" / "bench.json"
    report = json.loads(old.read_text())
    assert report["config"]["base"]["head_lr"] is None
    report["config"]["base"]["head_lr"] = 0.0
    old.write_text(json.dumps(report))
    assert cli.main(["bench-merge", str(tmp_path / "new"), str(old.parent), "--out", str(tmp_path / "m")]) == 0
    report["config"]["base"]["head_lr"] = 1e-3  # a bench that did take the head step does not merge
    old.write_text(json.dumps(report))
    assert "--head-lr" in bad(capsys, ["bench-merge", str(tmp_path / "new"), str(old.parent), "--out", str(tmp_path / "x")])


def test_a_tuner_bench_with_its_own_head_step_does_not_merge_with_one_that_turned_it_off(tmp_path, untrained, capsys):
    task = _jsonl(tmp_path, one_token_examples(40))
    v2 = Tuner.from_pretrained(untrained).with_head(1e-2).save_pretrained(tmp_path / "v2.safetensors")
    common = ["bench", "--model", "tiny-llama", "--task", task, "--forwards", "4", "--batch-size", "4", "--n-test",
              "6", "--n-dev", "6", "--eval-points", "2", "--lr", "1e-3", "--tuner", str(v2)]
    assert cli.main([*common, "--methods", "mezo,tuner", "--seeds", "0", "--out", str(tmp_path / "own")]) == 0
    runs = json.loads((tmp_path / "own" / "bench.json").read_text())["runs"]
    assert {r["method"]: r["head_lr"] for r in runs} == {"mezo": 0.0, "tuner": 1e-2}
    assert cli.main([*common, "--methods", "tuner", "--seeds", "1", "--head-lr", "0", "--out", str(tmp_path / "off")]) == 0
    err = bad(capsys, ["bench-merge", str(tmp_path / "own"), str(tmp_path / "off"), "--out", str(tmp_path / "x")])
    assert "different tuners" in err and "--head-lr 0" in err


def test_model_card_and_provenance_line_of_a_v2_tuner(untrained):
    from checkpoints.hub import model_card
    from checkpoints.inspect import provenance_text

    plain = Tuner.from_pretrained(untrained)
    assert "head step" not in model_card(plain) and provenance_text(plain) == "no provenance recorded"
    v2 = plain.with_head(3e-4)
    v2.provenance = {"head_selection": {"tasks": ["hotels"], "date": "2026-12-04"}}
    card = model_card(v2)
    assert "| head step | Adam at lr 0.0003" in card and "HeadStep(model, scorer, lr=tuner.head_lr)" in card
    assert provenance_text(v2) == ("untrained bank (every scale 1: MeZO's step); head step lr chosen on hotels by "
                                   "meta-train-head, 2026-12-04")
    for prov, start in [({"meta_tasks": ["a"], "steps": 3, "seed": 0}, "meta-trained on a: 3 steps"),
                        ({"kind": "static allocation"}, "static allocation"),
                        ({"imported_from": {"file": "x.pth", "run_tag": "t"}}, "imported from the ZO Fine-tuner file x.pth")]:
        v2.provenance = {**prov, "head_selection": {"tasks": ["hotels"], "date": "d"}}
        line = provenance_text(v2)
        assert line.startswith(start) and line.endswith("; head step lr chosen on hotels by meta-train-head, d"), line
    # a top-block step chosen on top of it: still an untrained bank, and where the top lr was chosen
    for top, end in [({"tasks": ["wc"], "date": "e"}, "by meta-train-top, e"), ({"tasks": ["wc"], "report": "r 20"},
                                                                             "(r 20)")]:
        v2.provenance = {"head_selection": {"tasks": ["hotels"], "date": "d"}, "top_selection": top}
        assert provenance_text(v2) == ("untrained bank (every scale 1: MeZO's step); head step lr chosen on hotels by "
                                       f"meta-train-head, d; top-block step lr chosen on wc {end}")


def test_a_second_bench_to_the_same_folder_is_refused_while_one_runs(tmp_path, capsys):
    # meta-train-head resumes an interrupted bench by itself, so two of them on one work folder must not both run it
    from finetune.common.runs import RunLock

    task = _jsonl(tmp_path, one_token_examples(40))
    out = tmp_path / "b"
    argv = ["bench", "--model", "tiny-llama", "--task", task, "--forwards", "4", "--batch-size", "4", "--n-test", "6",
            "--n-dev", "6", "--eval-points", "2", "--methods", "mezo", "--seeds", "0", "--out", str(out)]
    with RunLock(out):  # what a running bench holds
        assert "another run" in bad(capsys, argv)
    assert not out.exists() and not (tmp_path / ".b.partial").exists()
    assert cli.main(argv) == 0


def test_the_shipped_v2_tuner_is_mezo_scales_plus_the_head_lr_its_committed_benches_chose():
    root = cli.Path(cli.__file__).parent
    v2 = Tuner.from_pretrained(root / "checkpoints/pretrained/smollm2-135m-v2.safetensors")
    first, rest = v2.scales_at_rest()
    assert torch.equal(first, torch.ones_like(first)) and torch.equal(rest, torch.ones_like(rest))  # MeZO's step
    sel = v2.provenance["head_selection"]
    work = root / "reports/tuner-v2-smollm2/head-select"
    losses = {}
    for key in sel["dev_loss"]:  # mean over seeds, then over tasks
        per_task = []
        for task in sel["tasks"]:
            runs = [r for s in sel["seeds"]
                    for r in json.loads((bench_folder(work, task, float(key), s) / "bench.json").read_text())["runs"]]
            assert [r["seed"] for r in runs] == sel["seeds"] and all(r["head_lr"] == float(key) for r in runs)
            per_task.append(sum(r["curve"][-1]["dev_loss"] for r in runs) / len(runs))
        losses[key] = sum(per_task) / len(per_task)
    assert sel["dev_loss"] == pytest.approx(losses)
    assert v2.head_lr == float(min(losses, key=losses.get)) == sel["chosen"] and v2.recommended["lr"] == sel["lr"]


@pytest.mark.parametrize("name", ["-top", "-top-linear"])
def test_the_shipped_v2_top_tuners_are_v2_plus_the_top_step_their_committed_screens_chose(tmp_path, name):
    """smollm2-135m-v2-top is smollm2-135m-v2 (same bank, head step and recommended lr) plus the top lr whose mean final
    dev loss over the screen's committed runs is lowest, and below tuner v2's on both screened tasks (the rule of
    run.sh); -top-linear the same over section 20's arms too (constant and linearly decaying), whose pick must be a
    linear one, carried with its schedule; their recipe (make_top_tuner.py) writes each again, the same metadata and
    tensors."""
    import subprocess
    import sys

    root = cli.Path(cli.__file__).parent
    folder, report = root / "checkpoints/pretrained", root / "reports/tuner-v2-smollm2"
    v2, top = (Tuner.from_pretrained(folder / f"smollm2-135m-v2{n}.safetensors") for n in ("", name))
    assert all(torch.equal(getattr(v2.bank, k), getattr(top.bank, k)) for k in ("W1", "b1", "W2", "b2"))
    assert (top.head, top.recommended, v2.top) == (v2.head, v2.recommended, None)

    def final_dev(path):
        m = json.loads(path.read_text())
        return (m["runs"][0] if "runs" in m else m)["curve"][-1]["dev_loss"]

    bench = "head-select-packaged/packaged-word-class/head-lr-0.0003/seed-0/bench.json"  # tuner v2's run there
    alone = {"word-class": final_dev(report / bench),
             "noun-number": final_dev(report / "top-screen/noun-number/tuner-v2-s0/metrics.json")}
    decay = name.endswith("linear")
    arms = ["1e-4", "3e-4"] + (["3e-4-linear", "1e-3-linear"] if decay else [])
    dev = {arm: {t: final_dev(report / f"top-screen/{t}/tuner-v2-top-{arm}-s0/metrics.json") for t in alone}
           for arm in arms}
    best = min(dev, key=lambda arm: sum(dev[arm].values()))
    assert top.top_lr == float(best.split("-linear")[0]) and all(dev[best][t] < alone[t] for t in alone)
    assert top.top_schedule == ("linear" if decay else None) and best.endswith("linear") == decay
    out = tmp_path / "again.safetensors"
    subprocess.run([sys.executable, str(report / "make_top_tuner.py"), *(["--decay"] if decay else []), str(out)],
                   check=True, capture_output=True)
    files = [out, folder / f"smollm2-135m-v2{name}.safetensors"]  # (safetensors orders its header's keys freely)
    metas = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            metas.append({**f.metadata(), "zotune": json.loads(f.metadata()["zotune"])})
    assert metas[0] == metas[1]
    a, b = (load_file(str(p)) for p in files)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_shipped_v2_all_linear_tuner_is_v2_top_linear_plus_the_schedule_its_screen_chose(tmp_path):
    """smollm2-135m-v2-all-linear is smollm2-135m-v2-top-linear (same bank, head and top-block steps, recommended lr)
    recommending the linear schedule for the run (format 8), because the committed runs of stage decay-screen, which
    differ from the shipped configuration's runs only in --schedule, end with a lower mean final dev loss over the two
    meta-training tasks' three seeds (the rule of run.sh; recomputed here from the benches' files); its recipe
    (make_linear_tuner.py) writes it again, the same metadata and tensors."""
    import subprocess
    import sys

    root = cli.Path(cli.__file__).parent
    folder, report = root / "checkpoints/pretrained", root / "reports/tuner-v2-smollm2"
    top, linear = (Tuner.from_pretrained(folder / f"smollm2-135m-v2-{n}.safetensors") for n in ("top-linear",
                                                                                                   "all-linear"))
    assert all(torch.equal(getattr(top.bank, k), getattr(linear.bank, k)) for k in ("W1", "b1", "W2", "b2"))
    assert (linear.head, linear.top, top.schedule) == (top.head, top.top, None)
    assert linear.recommended == {**top.recommended, "schedule": "linear"} and linear.schedule == "linear"

    def bench(path):
        doc = json.loads((report / path / "bench.json").read_text())
        return doc["config"]["base"], doc["runs"][0]["curve"][-1]["dev_loss"]

    means = {}
    for arm in ("constant", "linear"):
        per_task = []
        for task in ("word-class", "noun-number"):
            runs = []
            for seed in (0, 1, 2):
                shipped = bench(f"top-cli/packaged-{task}/top-lr-0.001-linear/seed-{seed}")
                stem = "decay" if task == "word-class" else f"decay-{task}"
                run = shipped if arm == "constant" else bench(f"rise/{stem}-s{seed}")
                differ = {k for k in shipped[0] if shipped[0][k] != run[0].get(k)} - {"seed", "threads"}
                assert differ == (set() if arm == "constant" else {"schedule"}), differ
                assert run[0]["schedule"] == arm and run[0]["task"] == f"packaged:{task}"
                runs.append(run[1])
            per_task.append(sum(runs) / 3)
        means[arm] = sum(per_task) / 2
    assert means["linear"] < means["constant"]
    sel = linear.provenance["schedule_selection"]
    assert sel["dev_loss"] == pytest.approx(means) and sel["seeds"] == [0, 1, 2]
    out = tmp_path / "again.safetensors"
    subprocess.run([sys.executable, str(report / "make_linear_tuner.py"), str(out)], check=True, capture_output=True)
    files = [out, folder / "smollm2-135m-v2-all-linear.safetensors"]
    metas = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            metas.append({**f.metadata(), "zotune": json.loads(f.metadata()["zotune"])})
    assert metas[0] == metas[1] and metas[0]["format_version"] == "8"
    a, b = (load_file(str(p)) for p in files)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ the top-block step (format 5)
def test_a_top_step_is_format_5_round_trips_and_bad_top_metadata_is_refused(tmp_path, untrained):
    tuner = Tuner.from_pretrained(untrained)
    assert tuner.top is None and tuner.top_lr == 0 and tuner.with_top(0).top is None
    both = tuner.with_head(3e-4).with_top(1e-3)
    path = both.save_pretrained(tmp_path / "top.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["zotune"])
    assert meta["format_version"] == "5" and doc["top"] == {"lr": 1e-3} and doc["head"] == {"lr": 3e-4}
    back = Tuner.from_pretrained(path)
    assert back.top_lr == 1e-3 and back.head_lr == 3e-4 and back.metadata() == json.loads(json.dumps(both.metadata()))
    with safe_open(str(tuner.with_head(3e-4).save_pretrained(tmp_path / "head.safetensors")), framework="pt") as f:
        assert f.metadata()["format_version"] == "3"  # no top step: the file stays readable by older zotune
    assert both.top_schedule is None
    linear = both.with_top(1e-3, "linear")  # a top step with its own schedule: format 6
    with safe_open(str(linear.save_pretrained(tmp_path / "linear.safetensors")), framework="pt") as f:
        assert f.metadata()["format_version"] == "6"
        assert json.loads(f.metadata()["zotune"])["top"] == {"lr": 1e-3, "schedule": "linear"}
    back = Tuner.from_pretrained(tmp_path / "linear.safetensors")
    assert back.top_schedule == "linear" and back.top_lr == 1e-3 and back.with_top(0).top is None
    warm = both.with_top(1e-3, "linear-warmup")  # a schedule newer than format 6: format 7, refused by its readers
    with safe_open(str(warm.save_pretrained(tmp_path / "warm.safetensors")), framework="pt") as f:
        assert f.metadata()["format_version"] == "7"
    assert Tuner.from_pretrained(tmp_path / "warm.safetensors").top_schedule == "linear-warmup"
    with pytest.raises(ValueError, match="unknown schedule"):
        both.with_top(1e-3, "steep")
    for top, message in [({"lr": -1}, "not a finite number > 0"), ({"lr": 0}, "not a finite number > 0"),
                         ({"lr": "fast"}, "not a finite number > 0"), ({"lr": 1e-3, "betas": [0.9]}, "optionally"),
                         ({}, "optionally 'schedule'"), ([1e-3], "expected dict"),
                         ({"lr": 1e-3, "schedule": "steep"}, "not one of constant, linear, cosine")]:
        bad_doc = dict(doc, top=top)
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "zotune": json.dumps(bad_doc)})
        with pytest.raises(ZotuneError, match=message):
            Tuner.from_pretrained(tmp_path / "bad.safetensors")


def test_a_tuner_with_a_top_step_fine_tunes_as_mezo_with_top_lr_bit_for_bit(tmp_path, untrained, capsys):
    """An untrained tuner carrying the top-block step at lr t runs exactly as `--method mezo --top-lr t` (the same
    losses, evaluations and weights) and records t as the lr it took; `--top-lr 0` turns the tuner's step off (then
    exactly MeZO), and `--top-lr` given with the tuner overrides its lr."""
    task = _jsonl(tmp_path, one_token_examples(60))
    top = Tuner.from_pretrained(untrained).with_top(1e-2).save_pretrained(tmp_path / "top.safetensors")

    def run(name, *extra):
        out = tmp_path / name
        assert cli.main(["finetune", *BASE, "--task", task, "--steps", "5", "--eval-every", "2", *extra,
                         "--out", str(out)]) == 0
        said = capsys.readouterr().out
        metrics = json.loads((out / "metrics.json").read_text())
        assert ("with the top-block step at lr" in said) == bool(metrics["config"]["top_lr"]), said
        return metrics, load_model(str(out / "model"))[0]

    tuned, mezo_top = run("tuned", "--tuner", str(top)), run("mezo-top", "--method", "mezo", "--top-lr", "1e-2")
    assert tuned[0]["config"]["top_lr"] == mezo_top[0]["config"]["top_lr"] == 1e-2
    _same(tuned, mezo_top)
    off, mezo = run("off", "--tuner", str(top), "--top-lr", "0"), run("mezo", "--method", "mezo")
    assert off[0]["config"]["top_lr"] == mezo[0]["config"]["top_lr"] == 0
    _same(off, mezo)
    other, mezo_other = run("other", "--tuner", str(top), "--top-lr", "3e-2"), run("mo", "--method", "mezo",
                                                                                  "--top-lr", "3e-2")
    _same(other, mezo_other)
    assert tuned[0]["train_loss"] != mezo[0]["train_loss"] != other[0]["train_loss"]  # the step did act
    # a tuner whose step names its own schedule (format 6): as `--top-schedule` with MeZO, recorded as taken;
    # --top-lr replaces the tuner's step, schedule included, and --top-schedule overrides the tuner's schedule
    linear = Tuner.from_pretrained(top).with_top(1e-2, "linear").save_pretrained(tmp_path / "linear.safetensors")
    lin, mezo_lin = run("lin", "--tuner", str(linear)), run("ml", "--method", "mezo", "--top-lr", "1e-2",
                                                            "--top-schedule", "linear")
    assert lin[0]["config"]["top_schedule"] == mezo_lin[0]["config"]["top_schedule"] == "linear"
    _same(lin, mezo_lin)
    assert lin[0]["train_loss"] != tuned[0]["train_loss"]  # the decay did act
    replaced = run("replaced", "--tuner", str(linear), "--top-lr", "3e-2")
    assert replaced[0]["config"]["top_schedule"] is None
    _same(replaced, mezo_other)
    cosine, mezo_cos = run("cos", "--tuner", str(linear), "--top-schedule", "cosine"), run(
        "mc", "--method", "mezo", "--top-lr", "1e-2", "--top-schedule", "cosine")
    _same(cosine, mezo_cos)


def test_a_recommended_schedule_is_format_8_round_trips_and_a_bad_one_is_refused(tmp_path, untrained):
    """A tuner that recommends an lr schedule for fine-tuning is format 8 (older readers refuse it in one line rather
    than run it on a constant lr); constant is recorded as no recommendation; an unknown name is refused on load."""
    tuner = Tuner.from_pretrained(untrained).with_head(3e-4).with_top(1e-3, "linear")
    assert tuner.schedule is None and tuner.with_schedule("constant").recommended == tuner.recommended
    linear = tuner.with_schedule("linear")
    with safe_open(str(linear.save_pretrained(tmp_path / "linear.safetensors")), framework="pt") as f:
        assert f.metadata()["format_version"] == "8"
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    back = Tuner.from_pretrained(tmp_path / "linear.safetensors")
    assert back.schedule == "linear" and back.recommended == {**tuner.recommended, "schedule": "linear"}
    assert back.with_schedule(None).schedule is None and back.with_schedule("constant").schedule is None
    with safe_open(str(back.with_schedule(None).save_pretrained(tmp_path / "none.safetensors")), framework="pt") as f:
        assert f.metadata()["format_version"] == "6"  # the top step's own schedule: as before
    with pytest.raises(ValueError, match="unknown schedule"):
        tuner.with_schedule("steep")
    doc = json.loads(meta["zotune"])
    doc["recommended"]["schedule"] = "steep"
    save_file(tensors, str(tmp_path / "steep.safetensors"), metadata={**meta, "zotune": json.dumps(doc)})
    with pytest.raises(ZotuneError, match="recommended schedule 'steep' is not one of constant, linear") as e:
        Tuner.from_pretrained(tmp_path / "steep.safetensors")
    assert "\n" not in str(e.value)


def test_a_tuners_recommended_schedule_is_the_runs_unless_schedule_is_given(tmp_path, untrained, capsys):
    """finetune and bench with a tuner that recommends a schedule run under it, exactly as the same tuner without the
    recommendation given --schedule explicitly (the ZO, head and top steps all decay), and record it as taken; an
    explicit --schedule overrides it."""
    task = _jsonl(tmp_path, one_token_examples(60))
    plain = Tuner.from_pretrained(untrained).with_head(1e-2).with_top(1e-2, "linear")
    plain_path = plain.save_pretrained(tmp_path / "plain.safetensors")
    rec = plain.with_schedule("linear").save_pretrained(tmp_path / "rec.safetensors")

    def run(name, *extra):
        out = tmp_path / name
        assert cli.main(["finetune", *BASE, "--task", task, "--steps", "5", "--eval-every", "2", *extra,
                         "--out", str(out)]) == 0
        capsys.readouterr()
        return json.loads((out / "metrics.json").read_text()), load_model(str(out / "model"))[0]

    taken, given = run("rec", "--tuner", str(rec)), run("given", "--tuner", str(plain_path), "--schedule", "linear")
    assert taken[0]["config"]["schedule"] == given[0]["config"]["schedule"] == "linear"
    _same(taken, given)
    constant, plain_run = run("constant", "--tuner", str(rec), "--schedule", "constant"), run("plain", "--tuner",
                                                                                             str(plain_path))
    assert constant[0]["config"]["schedule"] == plain_run[0]["config"]["schedule"] == "constant"
    _same(constant, plain_run)
    assert taken[0]["train_loss"] != constant[0]["train_loss"]  # the decay did act
    bench_argv = ["bench", *BASE, "--task", task, "--methods", "tuner", "--forwards", "10", "--eval-points", "1"]
    assert cli.main([*bench_argv, "--tuner", str(rec), "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "b" / "bench.json").read_text())["config"]["base"]
    assert config["schedule"] == "linear"


def test_meta_train_top_runs_and_carries_the_runs_schedule(tmp_path, untrained, capsys):
    """meta-train-top --schedule runs every candidate under that schedule (benches in their own folders, beside those
    of a constant-schedule search in the same --work) and writes it into the tuner as its recommended schedule; a
    tuner that recommends one is searched under it."""
    from meta.top import bench_folder as top_folder

    task = _jsonl(tmp_path, one_token_examples(60))
    head = Tuner.from_pretrained(untrained).with_head(1e-2).save_pretrained(tmp_path / "head.safetensors")
    argv = ["meta-train-top", "--model", "tiny-llama", "--tasks", task, "--top-lrs", "0,3e-2", "--top-schedule",
            "linear", "--lr", "1e-3", "--batch-size", "4", "--n-dev", "8", "--n-test", "8", "--forwards", "12",
            "--eval-points", "2", "--work", str(tmp_path / "work")]
    assert cli.main([*argv, "--tuner", str(head), "--out", str(tmp_path / "const.safetensors")]) == 0
    assert cli.main([*argv, "--tuner", str(head), "--schedule", "linear", "--out",
                     str(tmp_path / "lin.safetensors")]) == 0
    assert "runs under the linear schedule" in capsys.readouterr().out
    assert Tuner.from_pretrained(tmp_path / "const.safetensors").schedule is None
    lin = Tuner.from_pretrained(tmp_path / "lin.safetensors")
    assert lin.schedule == "linear" and lin.provenance["top_selection"]["run_schedule"] == "linear"
    for lr in (0.0, 3e-2):
        const_bench, lin_bench = (json.loads((top_folder(tmp_path / "work", task, lr, 0, "linear", s) / "bench.json")
                                             .read_text()) for s in ("constant", "linear"))
        assert (const_bench["config"]["base"]["schedule"], lin_bench["config"]["base"]["schedule"]) == ("constant",
                                                                                                         "linear")
        assert const_bench["runs"][0]["train_loss"] != lin_bench["runs"][0]["train_loss"]
    assert top_folder(tmp_path / "work", task, 0.0, 0, None, "linear").parent.parent.name == "schedule-linear"
    # a tuner that recommends a schedule: its search runs under it, and its file carries it on; so does meta-train-head
    rec = Tuner.from_pretrained(head).with_schedule("linear").save_pretrained(tmp_path / "rec.safetensors")
    argv[argv.index("--work") + 1] = str(tmp_path / "work2")
    assert cli.main([*argv, "--tuner", str(rec), "--top-lrs", "3e-2", "--out",
                     str(tmp_path / "again.safetensors")]) == 0
    bench = json.loads((top_folder(tmp_path / "work2", task, 3e-2, 0, "linear", "linear") / "bench.json").read_text())
    assert bench["config"]["base"]["schedule"] == "linear"
    assert Tuner.from_pretrained(tmp_path / "again.safetensors").schedule == "linear"
    bare = Tuner.from_pretrained(untrained).with_schedule("linear").save_pretrained(tmp_path / "bare.safetensors")
    assert cli.main([*_select(tmp_path, task, "head-rec.safetensors"), "--tuner", str(bare), "--head-lrs", "2e-2",
                     "--seeds", "0", "--work", str(tmp_path / "work3")]) == 0
    bench = json.loads((bench_folder(tmp_path / "work3", task, 2e-2, 0) / "bench.json").read_text())
    assert bench["config"]["base"]["schedule"] == "linear"
    assert Tuner.from_pretrained(tmp_path / "head-rec.safetensors").schedule == "linear"


def test_a_tuners_top_step_is_refused_where_the_step_cannot_run(tmp_path, untrained, capsys):
    """Taken from the tuner, the top-block step is refused in one line where --top-lr is (the message says how to
    turn it off), and the data-parallel check reads it from the tuner file the config names."""
    from finetune.trainer import FinetuneConfig, check_parallel

    task = _jsonl(tmp_path, one_token_examples(40))
    top = Tuner.from_pretrained(untrained).with_top(1e-3).save_pretrained(tmp_path / "top.safetensors")
    err = bad(capsys, ["finetune", *BASE, "--task", task, "--steps", "1", "--tuner", str(top), "--save-log",
                       "--out", str(tmp_path / "o")])
    assert "--top-lr 0" in err and not (tmp_path / "o").exists()
    cfg = FinetuneConfig(model="tiny-llama", method="tuner", tuner=str(top))
    with pytest.raises(ZotuneError, match="pass --top-lr 0"):
        check_parallel(cfg, opt=None, dp=FakeGroup("batch"))
    check_parallel(FinetuneConfig(model="tiny-llama", method="tuner", tuner=str(top), top_lr=0.0), opt=None,
                   dp=FakeGroup("batch"))


def test_a_top_schedule_without_a_top_step_is_refused(tmp_path, untrained, capsys):
    """--top-schedule with no top-block step to schedule (no --top-lr, --top-lr 0, a tuner without one; a bench whose
    arms take none) is refused in one line before anything is written, instead of being recorded and ignored."""
    task = _jsonl(tmp_path, one_token_examples(40))
    top = Tuner.from_pretrained(untrained).with_top(1e-3).save_pretrained(tmp_path / "top.safetensors")
    run = ["finetune", *BASE, "--task", task, "--steps", "1", "--top-schedule", "linear"]
    for k, extra in enumerate([["--method", "mezo"], ["--method", "mezo", "--top-lr", "0"],
                               ["--tuner", str(untrained)], ["--tuner", str(top), "--top-lr", "0"]]):
        err = bad(capsys, [*run, *extra, "--out", str(tmp_path / f"o{k}")])
        assert "--top-schedule linear schedules the top-block step, and this run takes none" in err, err
        assert not (tmp_path / f"o{k}").exists()
    err = bad(capsys, ["bench", *BASE, "--task", task, "--methods", "mezo,fzoo", "--forwards", "4", "--seeds", "0",
                       "--top-schedule", "cosine", "--out", str(tmp_path / "b")])
    assert "this run takes none" in err and not (tmp_path / "b").exists()
    assert cli.main([*run, "--tuner", str(top), "--out", str(tmp_path / "ok")]) == 0  # the tuner's step: scheduled
    assert json.loads((tmp_path / "ok/metrics.json").read_text())["config"]["top_schedule"] == "linear"


def test_inspect_shows_the_top_step(tmp_path, untrained):
    assert "top step   none" in inspect_text(untrained)
    tuner = Tuner.from_pretrained(untrained).with_top(3e-4)
    tuner.recommended = {"lr": 3e-5, "eps": 1e-3}
    tuner.provenance = {"top_selection": {"tasks": ["t.jsonl"], "forwards": 10, "seeds": [0],
                                          "dev_loss": {"0": 0.7, "3e-4": 0.6}}}
    text = inspect_text(tuner.save_pretrained(tmp_path / "top.safetensors"))
    line = next(x for x in text.splitlines() if x.startswith("top step"))
    assert "Adam at lr 0.0003 on the last layer's MLP" in line and "on t.jsonl (10 forward passes" in line
    assert "0: 0.7000, 3e-4: 0.6000" in line and "schedule" not in line
    text = inspect_text(tuner.with_top(3e-4, "linear").save_pretrained(tmp_path / "linear.safetensors"))
    line = next(x for x in text.splitlines() if x.startswith("top step"))
    assert "its lr decaying on a linear schedule" in line
    rec = next(x for x in text.splitlines() if x.startswith("recommended fine-tuning"))
    assert rec == "recommended fine-tuning lr 3e-05, eps 0.001; constant lr"
    text = inspect_text(tuner.with_schedule("linear").save_pretrained(tmp_path / "rec.safetensors"))
    rec = next(x for x in text.splitlines() if x.startswith("recommended fine-tuning"))
    assert rec.endswith("the ZO and head steps' lr decaying on a linear schedule (--schedule)")
    chosen = tuner.with_schedule("linear")
    chosen.provenance = {**tuner.provenance, "schedule_selection": {
        "tasks": ["t.jsonl"], "forwards": 10, "seeds": [0, 1], "dev_loss": {"constant": 0.7, "linear": 0.6},
        "report": "a report"}}
    lines = inspect_text(chosen.save_pretrained(tmp_path / "chosen.safetensors")).splitlines()
    rec = next(x for x in lines if x.startswith("recommended fine-tuning"))
    assert rec.endswith("chosen by mean final dev loss on t.jsonl (10 forward passes, seeds [0, 1]): constant: 0.7000, "
                        "linear: 0.6000")
    assert any(x.startswith("untrained bank") and x.endswith("; schedule chosen on t.jsonl (a report)") for x in lines)


def test_a_snapshot_from_before_top_lr_existed_resumes(tmp_path, monkeypatch, capsys):
    """A run snapshotted by a zotune without --top-lr ran without the step: it resumes (its config lacks the key, read
    as 0, the lr a run without the option takes) and ends as a run never interrupted."""
    from finetune.trainer import snapshot_path
    from test_head import _straight_and_resumed

    def as_before_top_lr(out):
        path = snapshot_path(out)
        state = torch.load(path, weights_only=True)
        assert state["config"].pop("top_lr") == 0
        torch.save(state, path)

    task = _jsonl(tmp_path, one_token_examples(40))
    argv = ["finetune", *BASE, "--task", task, "--steps", "6", "--snapshot-every", "3"]
    out = _straight_and_resumed(tmp_path, monkeypatch, capsys, argv, killed=as_before_top_lr)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "straight", out))
    assert a["train_loss"] == b["train_loss"] and a["eval"] == b["eval"]


def test_meta_train_top_writes_the_grids_argmin_of_final_dev_loss(tmp_path, untrained, capsys):
    """meta-train-top: the tuner as given (its head step kept) plus the top lr whose benches end with the lowest final
    dev loss, mean over seeds then tasks (recomputed here from the benches' files), under --top-schedule (format 6);
    a finished bench is read again, not rerun; what it cannot start from is refused in one line."""
    from meta.top import bench_folder as top_folder

    task = _jsonl(tmp_path, one_token_examples(60))
    head = Tuner.from_pretrained(untrained).with_head(1e-2).save_pretrained(tmp_path / "head.safetensors")
    argv = ["meta-train-top", "--tuner", str(head), "--model", "tiny-llama", "--tasks", task, "--top-lrs", "0,3e-2",
            "--top-schedule", "linear", "--lr", "1e-3", "--batch-size", "4", "--n-dev", "8", "--n-test", "8",
            "--forwards", "12", "--eval-points", "2", "--seeds", "0,1", "--work", str(tmp_path / "work")]
    assert cli.main(argv + ["--out", str(tmp_path / "top.safetensors")]) == 0
    losses = {}
    for lr in (0.0, 3e-2):
        benches = [json.loads((top_folder(tmp_path / "work", task, lr, s, "linear") / "bench.json").read_text())
                   for s in (0, 1)]
        runs = [r for b in benches for r in b["runs"]]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["method"] == "tuner" and r["head_lr"] == 1e-2
                                                           for r in runs)
        assert all(b["config"]["base"]["top_lr"] == lr and b["config"]["base"]["top_schedule"] ==
                   ("linear" if lr else None) for b in benches)
        losses[lr] = sum(r["curve"][-1]["dev_loss"] for r in runs) / 2
    assert losses[0.0] != losses[3e-2]  # the step did act
    best = min(losses, key=losses.get)
    top = Tuner.from_pretrained(tmp_path / "top.safetensors")
    assert top.top_lr == best and top.head_lr == 1e-2
    assert top.top_schedule == ("linear" if best else None)
    sel = top.provenance["top_selection"]
    assert sel["dev_loss"] == {"0": pytest.approx(losses[0.0]), "0.03": pytest.approx(losses[3e-2])}
    assert sel["schedule"] == "linear" and sel["chosen"] == best
    assert "top-block step" in capsys.readouterr().out
    assert "already exists" in bad(capsys, argv + ["--out", str(tmp_path / "top.safetensors")])
    from finetune import bench as bench_module

    def no_bench(*a, **k):
        raise AssertionError("a finished bench was rerun")

    real = bench_module.bench
    bench_module.bench = no_bench
    try:
        assert cli.main(argv + ["--out", str(tmp_path / "again.safetensors")]) == 0
    finally:
        bench_module.bench = real
    assert Tuner.from_pretrained(tmp_path / "again.safetensors").top == top.top
    with_top = Tuner.from_pretrained(head).with_top(1e-3).save_pretrained(tmp_path / "has-top.safetensors")
    start = argv.index("--tuner") + 1
    err = bad(capsys, [*argv[:start], str(with_top), *argv[start + 1:], "--out", str(tmp_path / "x.safetensors")])
    assert "has a top-block step already" in err and not (tmp_path / "x.safetensors").exists()
    assert "--top-lrs must be distinct" in bad(capsys, [*argv, "--top-lrs", "1e-3,1e-3", "--out",
                                                        str(tmp_path / "y.safetensors")])
