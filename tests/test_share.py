"""Sharing tuners (export, push, pull, hf:// specs, list), the safe import of the published ZO Fine-tuner
``.pth`` files and the paper's compatibility mode, and the README section's Python example.

Everything up to the network is tested: the Hub client is replaced by stubs, and the real client is only
called with HF_HUB_OFFLINE set, where it must fail fast with a one-line error.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.repocard import metadata_load
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import cli
from checkpoints import Tuner, hub, remote
from checkpoints.pth_import import convert, read_pth
from finetune.common.errors import ZotuneError
from finetune.data.models import load_model
from finetune.zo.optim import TunedZO
from pertnn import FeatureConfig, PertNNBank, PertNNConfig, StepHistory, block_features, model_blocks
from pertnn.features import param_stats

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")[0]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def params_of(model):
    return [p for p in model.parameters() if p.requires_grad]


def trained_tuner(model, base_model=HUB_ID, seed=0) -> Tuner:
    """A tuner whose scales differ across blocks, with provenance and results like meta-train writes."""
    tuner = Tuner.for_model(model, base_model, seed=seed)
    tuner.bank.randomize_output_(torch.Generator().manual_seed(seed))
    tuner.provenance = {"meta_tasks": ["sst2", "copa"], "steps": 200, "seed": 3, "zotune_version": "0.1.0",
                        "date": "2025-01-02T03:04:05+00:00", "summary": {"first_order_gain": 1.234}}
    tuner.recommended = {"lr": 1e-4, "eps": 1e-3}
    return tuner


def paper_modules(model, seed=0, dtype=torch.float32) -> dict[str, nn.Sequential]:
    """The published layout: parameter name -> Sequential(Linear(5,64), Tanh, Linear(64,1))."""
    torch.manual_seed(seed)
    return {b.name: nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1)).to(dtype)
            for b in model_blocks(model)}


def rewrite_pickle(path: Path, edit) -> None:
    """Rewrite ``data.pkl`` of a torch zip archive with ``edit(bytes) -> bytes``."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    entries[name] = edit(entries[name])
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------- compatibility mode (pertnn)
def test_raw_features_are_the_papers(llama):
    params = params_of(llama)
    cfg = FeatureConfig(kind="raw")
    history = StepHistory(len(params), cfg)
    x0 = history.features(params)
    for i, p in enumerate(params):
        assert torch.allclose(x0[i, 0], p.mean(), atol=1e-7)
        assert torch.allclose(x0[i, 1], torch.var(p), rtol=1e-5)  # unbiased (N-1)
    assert torch.all(x0[:, 2:4] == 0) and torch.all(x0[:, 4] == 1)  # h0 = (0, 0), sigma0 = 1
    scale, output = torch.rand(len(params)), torch.rand(len(params)) + 2
    history.update(3.5, 1.25, scale, output)
    x1 = history.features(params)
    assert torch.all(x1[:, 2] == 3.5) and torch.all(x1[:, 3] == 1.25)  # raw losses, no ratio
    assert torch.equal(x1[:, 4], output)  # the output before energy normalisation is fed back
    normalised = StepHistory(len(params))
    normalised.update(3.5, 1.25, scale, output)
    assert torch.allclose(normalised.prev_scale, scale)  # the default kind keeps feeding back the scale
    with pytest.raises(ValueError, match="kind"):
        FeatureConfig(kind="log")


def test_abs_output_is_the_mlp_magnitude_with_a_nonzero_last_layer():
    numels = [10, 300, 7]
    bank = PertNNBank(numels, PertNNConfig(output="abs", energy_norm=False), generator=torch.Generator().manual_seed(0))
    assert bank.W2.abs().sum() > 0 and bank.b2.abs().sum() > 0  # a zero last layer would give sigma = 0
    x = torch.randn(3, 5)
    assert torch.allclose(bank(x), bank.mlp_out(x).abs().double())
    normed = PertNNBank(numels, PertNNConfig(output="abs"))
    normed.load_state_dict(bank.state_dict())
    sigma, out = normed.scales_and_output(x)
    n = torch.tensor(numels, dtype=torch.float64)
    assert torch.allclose(out, bank(x)) and torch.allclose((n * sigma**2).sum(), n.sum())
    assert torch.allclose(sigma / out, (sigma / out)[0].expand(3))  # one common factor
    with pytest.raises(ValueError, match="output"):
        PertNNConfig(output="relu")


def test_new_config_fields_round_trip_and_old_files_load(tmp_path, llama):
    tuner = Tuner.for_model(llama, "tiny-llama", PertNNConfig(hidden=8, output="abs"), FeatureConfig(kind="raw"))
    tuner.blocks[0]["energy_numel"] = 1234
    tuner.bank = PertNNBank([b.get("energy_numel", b["numel"]) for b in tuner.blocks], tuner.bank.cfg)
    back = Tuner.from_pretrained(tuner.save_pretrained(tmp_path / "new.safetensors"))
    assert back.bank.cfg == tuner.bank.cfg and back.feature_config == tuner.feature_config
    assert back.bank.numels[0] == 1234 and back.bank.numels[1] == tuner.blocks[1]["numel"]

    # a file written before these fields existed: same tensors, metadata without kind/output/energy_numel
    old = Tuner.for_model(llama, "tiny-llama", PertNNConfig(hidden=8))
    path = old.save_pretrained(tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["zotune"])
    del meta["pertnn"]["output"], meta["features"]["kind"]
    header["zotune"] = json.dumps(meta)
    save_file(tensors, str(path), metadata=header)
    loaded = Tuner.from_pretrained(path)
    assert loaded.bank.cfg.output == "softplus" and loaded.feature_config.kind == "normalised"
    x = torch.randn(len(old.blocks), 5)
    assert torch.equal(loaded.bank.scales(x), old.bank.scales(x))


# ------------------------------------------------------------------------- import of the published .pth
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pth_import_gives_the_same_sigma_as_the_original_modules(tmp_path, llama, dtype):
    mods = paper_modules(llama, dtype=dtype)
    src = tmp_path / "llama1B.pth"
    torch.save(mods, src)
    # the published files carry CUDA device tags; they must load on the CPU
    rewrite_pickle(src, lambda b: b.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:3"))
    assert b"cuda:3" in zipfile.ZipFile(src).read("llama1B/data.pkl")
    tuner = Tuner.from_pretrained(convert(src, llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors"))
    assert tuner.bank.cfg.output == "abs" and tuner.bank.cfg.hidden == 64 and tuner.feature_config.kind == "raw"
    assert tuner.provenance["imported_from"]["run_tag"] == "llama1B"

    params = params_of(llama)
    x = block_features(params, (2.5, 2.25), None, torch.rand(len(params)) + 0.5, tuner.feature_config)
    with torch.no_grad():
        ref = torch.stack([m.float()(x[i]).abs().squeeze() for i, m in enumerate(mods.values())]).double()
    sigma, out = tuner.bank.scales_and_output(x)
    assert torch.allclose(out, ref, atol=1e-6)
    n = torch.tensor([p.numel() for p in params], dtype=torch.float64)
    assert torch.allclose(sigma, ref * torch.sqrt(n.sum() / (n * ref**2).sum()), atol=1e-6)  # the paper's nf


def test_paper_effective_sizes_for_the_energy_normalisation(tmp_path, llama):
    mods = paper_modules(llama)
    torch.save(mods, tmp_path / "m.pth")
    tuner = convert(tmp_path / "m.pth", llama, "tiny-llama", paper_batch=16)
    blocks = model_blocks(llama)
    n_eff = torch.tensor([15 * 16 * b.shape[1] if "embed" in b.name else b.numel for b in blocks],
                         dtype=torch.float64)
    assert n_eff[0] != blocks[0].numel  # tiny-llama's embedding is the first block
    x = torch.randn(len(blocks), 5)
    with torch.no_grad():
        ref = torch.stack([m(x[i]).abs().squeeze() for i, m in enumerate(mods.values())]).double()
    nf = torch.sqrt(n_eff.sum() / (n_eff * ref**2).sum())
    assert torch.allclose(tuner.bank.scales(x), nf * ref, atol=1e-6)
    assert torch.allclose(Tuner.from_pretrained(tuner.save_pretrained(tmp_path / "t.safetensors")).bank.scales(x),
                          nf * ref, atol=1e-6)


def test_imported_tuner_drives_tuned_zo_with_the_papers_feedback(tmp_path, llama):
    """Step 2's scales come from [mean, var, L+, L-, |MLP| of step 1 before normalisation]."""
    torch.save(paper_modules(llama, seed=1), tmp_path / "m.pth")
    tuner = convert(tmp_path / "m.pth", llama, "tiny-llama")
    model = load_model("tiny-llama")[0]
    ids = torch.arange(2, 14).reshape(2, 6)
    opt = TunedZO(model, tuner, lr=1e-3, eps=1e-3, seed=0)
    closure = lambda: model(input_ids=ids).logits.float().pow(2).mean()  # noqa: E731
    first = tuner.bank.scales_and_output(block_features(params_of(model), None, None, torch.ones(len(tuner.blocks)),
                                                        tuner.feature_config))
    stats = param_stats(params_of(model), tuner.feature_config)  # reused until stats_every steps have passed
    opt.step(closure)
    assert torch.equal(opt.last["scales"], first[0])
    lp, lm = opt.last["loss_plus"], opt.last["loss_minus"]
    expected = block_features(params_of(model), (lp, lm), None, first[1].float(), tuner.feature_config, stats)
    opt.step(closure)
    assert torch.equal(opt.last["scales"], tuner.bank.scales(expected))
    assert not torch.allclose(opt.last["scales"], first[0])


def test_import_names_the_first_missing_or_extra_block(tmp_path, llama):
    torch.save(paper_modules(llama), tmp_path / "llama.pth")
    qwen = load_model("tiny-qwen2")[0]
    with pytest.raises(ZotuneError, match=r"no MLP for block 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
        convert(tmp_path / "llama.pth", qwen, "tiny-qwen2")
    mods = paper_modules(llama)
    mods["lm_head.weight"] = nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1))
    torch.save(mods, tmp_path / "extra.pth")
    with pytest.raises(ZotuneError, match=r"MLP for 'lm_head\.weight', which tiny-llama does not have"):
        convert(tmp_path / "extra.pth", llama, "tiny-llama")
    mods = paper_modules(llama)
    mods[next(iter(mods))] = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 1))
    torch.save(mods, tmp_path / "relu.pth")
    with pytest.raises(ZotuneError, match=r"torch\.nn\.modules\.activation\.ReLU"):
        read_pth(tmp_path / "relu.pth")
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ZotuneError, match="not a torch zip archive"):
        read_pth(tmp_path / "plain.pth")


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Exec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload,refused", [(_System, r"(posix|os|nt)\.system"),
                                             (_Exec, r"(__builtin__|builtins)\.exec")])
def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, llama, capsys, payload, refused):
    marker = tmp_path / "pwned"
    mods = paper_modules(llama)
    mods["evil"] = payload(marker)
    src = tmp_path / "evil.pth"
    torch.save(mods, src)
    with pytest.raises(ZotuneError, match=refused + ".*refused without running it"):
        convert(src, llama, "tiny-llama")
    err = one_line_error(capsys, ["tuners", "import-pth", str(src), "--model", "tiny-llama", "--threads", "1",
                                  "--out", str(tmp_path / "t.safetensors")])
    assert "refused" in err and not (tmp_path / "t.safetensors").exists()
    assert not marker.exists()
    # the file really is malicious: the plain unpickler (what torch.load(weights_only=False) amounts to) runs it
    torch.save({"evil": payload(marker)}, tmp_path / "bare.pth")
    with zipfile.ZipFile(tmp_path / "bare.pth") as z:
        pickle.loads(z.read("bare/data.pkl"))
    assert marker.exists()


def test_cli_import_pth(tmp_path, llama, capsys):
    torch.save(paper_modules(llama), tmp_path / "m.pth")
    out = tmp_path / "t.safetensors"
    argv = ["tuners", "import-pth", str(tmp_path / "m.pth"), "--model", "tiny-llama", "--out", str(out),
            "--threads", "1"]
    assert cli.main(argv) == 0 and "converted 20 blocks" in capsys.readouterr().out
    assert Tuner.from_pretrained(out).base_model == "tiny-llama"
    assert "already exists" in one_line_error(capsys, argv)
    assert cli.main(["tuners", "inspect", str(out)]) == 0
    assert "imported from the ZO Fine-tuner file m.pth" in capsys.readouterr().out


# ------------------------------------------------------------------------- hf:// specs, export, push, pull, list
def test_parse_hf_specs():
    assert remote.parse_hf("hf://user/name") == ("user/name", "tuner.safetensors")
    assert remote.parse_hf("hf://user/name/") == ("user/name", "tuner.safetensors")
    assert remote.parse_hf("hf://user/my.tuner-2/sub/v2.safetensors") == ("user/my.tuner-2", "sub/v2.safetensors")
    for bad in ("hf://user", "hf://", "hf://us er/name", "hf://user/../x", "hf://a/b/../c.safetensors", "user/name"):
        with pytest.raises(ZotuneError):
            remote.parse_hf(bad)
    assert remote.resolve("some/local.safetensors") == Path("some/local.safetensors")


def test_export_writes_the_tuner_and_a_model_card(tmp_path, llama, capsys):
    src = trained_tuner(llama).save_pretrained(tmp_path / "t.safetensors")
    out = tmp_path / "hub"
    assert cli.main(["tuners", "export", str(src), str(out), "--repo", "me/smol-tuner"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "tuner.safetensors"]
    assert (out / "tuner.safetensors").read_bytes() == src.read_bytes()
    meta = metadata_load(out / "README.md")  # the Hub client's own front-matter parser
    assert meta == {"library_name": "zotune", "base_model": HUB_ID,
                    "tags": ["zotune", "zeroth-order", "learned-optimizer"]}
    card = (out / "README.md").read_text()
    for text in ("sst2, copa", "| meta-training steps | 200 |", "| meta-training seed | 3 |", "2025-01-02T03:04:05",
                 "first_order_gain: 1.234", "lr = 0.0001", "python cli.py tuners pull me/smol-tuner",
                 'Tuner.from_pretrained("hf://me/smol-tuner")', "--tuner hf://me/smol-tuner"):
        assert text in card, text
    assert "already exists" in one_line_error(capsys, ["tuners", "export", str(src), str(out)])
    # a tiny model is no Hub id: no base_model in the front matter; a bad tuner leaves no folder
    tiny = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "tiny.safetensors")
    assert "base_model" not in metadata_load(hub.export(tiny, tmp_path / "hub2") / "README.md")
    steps = Tuner.from_pretrained(tiny).with_head(3e-4).with_top(1e-3)  # the card says how to take each exact step
    text = hub.model_card(steps)
    assert "HeadStep(model, scorer, lr=tuner.head_lr)" in text and "TopStep(model, scorer, tuner.top_lr)" in text
    assert "TopStep" not in hub.model_card(Tuner.from_pretrained(tiny)) and "schedule_factor" not in text
    assert "schedule_factor('linear', t, T)" in hub.model_card(steps.with_top(1e-3, "linear"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a tuner")
    one_line_error(capsys, ["tuners", "export", str(tmp_path / "bad.safetensors"), str(tmp_path / "hub3")])
    assert not (tmp_path / "hub3").exists() and not list(tmp_path.glob(".hub3*"))


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the uploaded files."""

    calls: list = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, files, kw))


def test_push_hands_the_exported_folder_to_the_hub_client(tmp_path, llama, capsys, monkeypatch):
    src = trained_tuner(llama).save_pretrained(tmp_path / "t.safetensors")
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    assert cli.main(["tuners", "push", str(src), "--repo", "me/smol-tuner"]) == 0
    assert "https://huggingface.co/me/smol-tuner" in capsys.readouterr().out
    (c1, repo1, kw1), (c2, repo2, files, kw2) = RecordingApi.calls
    assert (c1, repo1, c2, repo2) == ("create_repo", "me/smol-tuner", "upload_folder", "me/smol-tuner")
    assert kw1["exist_ok"] is True and kw1["private"] is False and kw2["repo_type"] == "model"
    assert sorted(files) == ["README.md", "tuner.safetensors"] and files["tuner.safetensors"] == src.read_bytes()
    assert b"hf://me/smol-tuner" in files["README.md"] and b"library_name: zotune" in files["README.md"]
    RecordingApi.calls = []
    assert "not a Hugging Face Hub repository id" in one_line_error(capsys, ["tuners", "push", str(src), "--repo",
                                                                             "no-owner"])
    assert RecordingApi.calls == []


def test_the_real_hub_client_offline_fails_fast_on_one_line(tmp_path, llama, capsys):
    src = trained_tuner(llama).save_pretrained(tmp_path / "t.safetensors")
    for argv in (["tuners", "pull", "me/smol-tuner"], ["tuners", "push", str(src), "--repo", "me/smol-tuner"],
                 ["tuners", "inspect", "hf://me/smol-tuner"]):
        err = one_line_error(capsys, argv)
        assert "the Hugging Face Hub is unreachable (HF_HUB_OFFLINE is set)" in err, err


def stub_download(monkeypatch, files: dict[str, Path]):
    """Replace hf_hub_download by a copy from ``files[filename]`` into ``local_dir``; record the calls."""
    calls = []

    def fake(repo_id, filename, *, local_dir, **kw):
        calls.append((repo_id, filename, Path(local_dir)))
        if filename not in files:
            raise huggingface_hub.errors.EntryNotFoundError(f"404 Client Error: entry {filename} not found")
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[filename], dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return calls


def test_pull_stores_in_the_cache_and_hf_specs_load(tmp_path, llama, capsys, monkeypatch):
    src = trained_tuner(llama).save_pretrained(tmp_path / "t.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    calls = stub_download(monkeypatch, {"tuner.safetensors": src, "v2/other.safetensors": src,
                                        "junk.safetensors": tmp_path / "junk.safetensors"})
    assert cli.main(["tuners", "pull", "me/smol-tuner"]) == 0
    cached = tmp_path / "cache" / "tuners" / "me--smol-tuner" / "tuner.safetensors"
    assert str(cached) in capsys.readouterr().out and cached.read_bytes() == src.read_bytes()
    assert calls[-1] == ("me/smol-tuner", "tuner.safetensors", cached.parent)
    tuner = Tuner.from_pretrained("hf://me/smol-tuner/v2/other.safetensors")
    assert calls[-1][:2] == ("me/smol-tuner", "v2/other.safetensors") and tuner.base_model == HUB_ID
    err = one_line_error(capsys, ["tuners", "pull", "hf://me/smol-tuner/junk.safetensors"])
    assert "is not a readable safetensors file" in err
    err = one_line_error(capsys, ["tuners", "pull", "me/smol-tuner", "--file", "nope.safetensors"])
    assert "has no such file" in err


def test_list_shows_shipped_and_cached_tuners(tmp_path, llama, capsys, monkeypatch):
    assert cli.main(["tuners", "list"]) == 0 and "no tuners shipped" in capsys.readouterr().out
    shipped = trained_tuner(llama).save_pretrained(tmp_path / "shipped" / "smollm2-135m.safetensors")
    torch.save(paper_modules(llama), tmp_path / "m.pth")
    src = convert(tmp_path / "m.pth", llama, "tiny-llama").save_pretrained(tmp_path / "imported.safetensors")
    stub_download(monkeypatch, {"tuner.safetensors": src})
    hub.pull("me/imported")
    rows = hub.list_tuners()
    assert [(r["source"], r["base_model"], r["size"]) for r in rows] == [
        ("shipped", HUB_ID, shipped.stat().st_size), ("hf://me/imported", "tiny-llama", src.stat().st_size)]
    assert "meta-trained on sst2, copa: 200 steps" in rows[0]["provenance"]
    assert "imported from the ZO Fine-tuner file m.pth" in rows[1]["provenance"]
    assert cli.main(["tuners", "list"]) == 0
    out = capsys.readouterr().out
    assert str(shipped) in out and "hf://me/imported" in out and f"base model {HUB_ID}" in out


def test_finetune_accepts_an_hf_tuner(tmp_path, llama, monkeypatch, capsys):
    src = Tuner.for_model(llama, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    calls = stub_download(monkeypatch, {"tuner.safetensors": src})
    task = tmp_path / "task.jsonl"
    rng = random.Random(0)
    task.write_text("".join(json.dumps({"input": f"{rng.choice('abc')} x. Answer:", "options": [" yes", " no"],
                                        "label": rng.randint(0, 1)}) + "\n" for _ in range(24)))
    argv = ["finetune", "--tuner", "hf://me/tiny", "--task", str(task), "--steps", "2", "--batch-size", "2",
            "--n-test", "4", "--threads", "1", "--no-save-model", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["forwards"] == 4 and len(calls) == 1
    assert metrics["config"]["method"] == "tuner" and metrics["config"]["model"] == "tiny-llama"


# ------------------------------------------------------------------------- the docs' tuner example in Python
def test_docs_tuner_python_example_runs(tmp_path, llama):
    """The Python API docs' tuner example on tiny-llama, a JSONL task and 3 steps."""
    text = (ROOT / "docs" / "python-api.md").read_text()
    code = text.split("## With a meta-trained tuner", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    tuner_file = trained_tuner(llama, "tiny-llama").save_pretrained(tmp_path / "shipped.safetensors")
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"input": f"word {i}. Answer:", "options": [" yes", " no"], "label": i % 2})
                            + "\n" for i in range(40)))
    for old, new in [('"checkpoints/pretrained/smollm2-135m.safetensors"', repr(str(tuner_file))),
                     ('"smollm2-135m"', '"tiny-llama"'), ('"bigbench:strategyqa"', repr(str(task))),
                     ("range(100)", "range(3)"), ('"my-tuner.safetensors"', repr(str(tmp_path / "mine.safetensors")))]:
        assert old in code, old
        code = code.replace(old, new)
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith(("from ", "import "))]) <= 10
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    opt = scope["opt"]
    assert opt.engine.forwards == 6 and opt.history.losses is not None
    assert float(opt.last["scales"].std()) > 0.01  # the tuner, not MeZO, set the scales
    saved = Tuner.from_pretrained(tmp_path / "mine.safetensors")
    assert saved.metadata() == scope["tuner"].metadata()
    assert all(torch.equal(getattr(saved.bank, k), getattr(scope["tuner"].bank, k)) for k in ("W1", "b1", "W2", "b2"))
    assert re.search(r"untested on our machines", (ROOT / "docs" / "sharing.md").read_text())
