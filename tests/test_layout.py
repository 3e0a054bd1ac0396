"""The house rules: layers import only downwards, no import cycles, nothing points outside the repository,
and a run loads its tuner once."""
import ast
import subprocess
from pathlib import Path

import pytest

import cli
from checkpoints import Tuner
from finetune.data.models import load_model

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pertnn", "finetune", "meta", "checkpoints")

# What each layer may import from the project (its own modules always). Lowest first.
ALLOWED = {
    "pertnn": ("pertnn",),
    "finetune.common": ("finetune.common",),
    "finetune.zo": ("finetune.zo", "finetune.common", "pertnn"),
    "finetune.data": ("finetune.data", "finetune.common"),
    "checkpoints": ("checkpoints", "finetune.common", "pertnn"),
    "meta": ("meta", "finetune.zo", "finetune.data", "finetune.common", "checkpoints", "pertnn"),
    # the head step's lr is chosen by real fine-tuning runs: its inner loop is the bench (and nothing else of meta)
    "meta.head": ("meta", "finetune.zo", "finetune.data", "finetune.common", "checkpoints", "pertnn",
                  "finetune.trainer", "finetune.bench"),
    "meta.top": ("meta", "finetune.zo", "finetune.data", "finetune.common", "checkpoints", "pertnn",
                 "finetune.trainer", "finetune.bench"),  # the same, for the top-block step's lr
    "meta.selection": ("meta", "finetune.zo", "finetune.data", "finetune.common", "checkpoints", "pertnn",
                       "finetune.trainer", "finetune.bench"),  # the runs both choose by
    "finetune": ("finetune", "checkpoints", "pertnn"),  # the fine-tune stage: trainer, bench (never meta)
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def project_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, at module level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t in known and t != name:
                found.add(t)
    return found


def layer(name: str) -> str:
    for key in sorted(ALLOWED, key=len, reverse=True):
        if name == key or name.startswith(key + "."):
            return key
    raise AssertionError(f"{name} is in no layer")


def test_layers_import_only_downwards():
    known = modules()
    bad = []
    for name, path in known.items():
        allowed = ALLOWED[layer(name)]
        for target in project_imports(name, path, known):
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{name} -> {target}")
    assert not bad, bad


def test_no_import_cycles():
    known = modules()
    graph = {name: project_imports(name, path, known) for name, path in known.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the code
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_nothing_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for f in files:
        if not f.endswith((".py", ".md", ".sh", ".toml", "Makefile")) or f == "tests/test_layout.py":
            continue
        text = (ROOT / f).read_text(errors="replace")
        for needle in ("../shared", "shared/research", "design card", "spec §", "_spec.md", "zo_landscape", "zo_baselines", "§7", "§1.", "§4", "§6"):
            if needle in text:
                offenders.append(f"{f}: {needle}")
    assert not offenders, offenders


def test_a_tuner_is_loaded_and_validated_once_per_run(tmp_path, monkeypatch, tasks):
    model, _ = load_model("tiny-llama")
    path = Tuner.for_model(model, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    calls = []
    original = Tuner.from_pretrained.__func__

    def counting(cls, spec):
        calls.append(spec)
        return original(cls, spec)

    monkeypatch.setattr(Tuner, "from_pretrained", classmethod(counting))
    code = cli.main(["finetune", "--tuner", str(path), "--task", tasks[0], "--steps", "2", "--lr", "1e-3",
                     "--batch-size", "4", "--n-test", "4", "--out", str(tmp_path / "run"), "--no-save-model"])
    assert code == 0
    assert len(calls) == 1, calls


@pytest.mark.parametrize("layer_name", sorted(ALLOWED))
def test_every_layer_has_code(layer_name):
    """The layers the rules above speak of exist (a rename would otherwise make the rules vacuous)."""
    assert any(layer(name) == layer_name for name in modules())
