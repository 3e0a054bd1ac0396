"""`pip install .` gives a `zotune` command equal to `python cli.py`.

The project is installed (without dependencies, from a copy of its sources) into a temporary prefix, and the
installed script is run in a fresh process next to `python cli.py` from the checkout.
"""
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "cli.py", "finetune", "meta", "pertnn", "checkpoints")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the installed `zotune` script, its site-packages folder)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / name).is_dir() else {}))
    prefix = tmp / "prefix"
    # offline with the setuptools at hand; a venv without setuptools (Python >= 3.12) fetches it from PyPI
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *offline, "--prefix", str(prefix),
                    str(src)], check=True, capture_output=True, text=True)
    (site,) = prefix.glob("lib/python*/site-packages")
    return prefix / "bin" / "zotune", site


def _run(command: list[str], site: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site) if site else str(ROOT))
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_the_installed_entry_point_is_cli_main(installed):
    script, site = installed
    (dist,) = [d for d in importlib.metadata.distributions(path=[str(site)]) if d.metadata["Name"] == "zotune"]
    (entry,) = [e for e in dist.entry_points if e.group == "console_scripts"]
    assert (entry.name, entry.value) == ("zotune", "cli:main")
    assert script.is_file() and os.access(script, os.X_OK)


def test_zotune_equals_python_cli_py(installed, tmp_path):
    script, site = installed
    outputs = {}
    for argv, status in ((["tasks"], 0), (["finetune", "--steps", "x"], 2),
                         (["finetune", "--model", "./no/such/folder", "--out", "never"], 2)):
        ours = _run([str(script), *argv], site, tmp_path)          # the installed copy, away from the checkout
        theirs = _run([sys.executable, str(ROOT / "cli.py"), *argv], None, tmp_path)
        assert ours.returncode == theirs.returncode == status, argv
        # the same text, except that each names itself (usage lines and the "see: ... -h" hint)
        assert ours.stdout == theirs.stdout.replace("cli.py", "zotune"), argv
        assert ours.stderr == theirs.stderr.replace("python cli.py", "zotune").replace("cli.py", "zotune"), argv
        if status:
            assert len(ours.stderr.strip().splitlines()) == 1 and "Traceback" not in ours.stderr
        outputs[argv[1] if len(argv) > 1 else argv[0]] = ours
    assert "BIG-bench tasks" in outputs["tasks"].stdout and "bigbench" not in outputs["tasks"].stderr
    assert "held out: vader-polarity, city-continent" in outputs["tasks"].stdout
    assert "(see: zotune finetune -h)" in outputs["--steps"].stderr          # argparse's error, named for zotune
    assert outputs["--model"].stderr.startswith("error: no model folder at ./no/such/folder")  # a ZotuneError
