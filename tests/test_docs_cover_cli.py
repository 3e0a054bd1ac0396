"""Every option of every `cli.py` command is documented: it appears, spelled exactly, in docs/ or the README."""
import argparse
import re
from pathlib import Path

import cli

ROOT = Path(__file__).resolve().parents[1]


def commands(parser: argparse.ArgumentParser, prefix: tuple = ()) -> dict[str, argparse.ArgumentParser]:
    """Each leaf command's parser, by its words (``tuners inspect``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {" ".join(prefix): parser}
    out = {}
    for name, sub in subs[0].choices.items():
        out.update(commands(sub, prefix + (name,)))
    return out


def undocumented(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``command --option`` for each long option of the parser's commands that ``text`` never mentions."""
    out = []
    for name, sub in commands(parser).items():
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and \
                        not re.search(re.escape(option) + r"(?![\w-])", text):
                    out.append(f"{name} {option}")
    return out


def test_a_missing_option_is_found():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers().add_parser("run")
    sub.add_argument("--steps")
    sub.add_argument("--steps-per-eval")
    assert undocumented(p, "use `--steps-per-eval` to ...") == ["run --steps"]
    assert undocumented(p, "--steps and --steps-per-eval") == []


def test_every_cli_option_is_documented():
    text = "\n".join(f.read_text() for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    names = commands(cli.parser())
    assert {"finetune", "meta-train", "bench", "tuners inspect"} <= set(names)
    assert undocumented(cli.parser(), text) == []
