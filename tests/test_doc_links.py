"""Every relative link in the repository's Markdown (README, docs/, reports/) reaches a file, and every
``#anchor`` a heading of its target, under GitHub's rule for heading anchors."""
import functools
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not images
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings; a repeated heading gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), flags=re.M):
        s = slug(heading)
        seen[s] = seen.get(s, -1) + 1
        yield s if seen[s] == 0 else f"{s}-{seen[s]}"


@functools.lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    """The anchors of one Markdown file, read once however many links point at it."""
    return frozenset(anchors(path.read_text()))


def broken_links(path: Path) -> list[str]:
    """The relative links of one Markdown file that reach no file, or no heading of their target."""
    out = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, ...
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file) if file else path
        if not dest.exists():
            out.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors_of(dest.resolve()):
            out.append(f"{target} (no such heading)")
    return out


def test_slug_follows_githubs_rule():
    # anchors as GitHub renders them for headings of this repository
    assert slug("The direction policy (`--direction-policy`)") == "the-direction-policy---direction-policy"
    assert (slug("Fine-tunes as replayable logs (`finetune/replay.py`)")
            == "fine-tunes-as-replayable-logs-finetunereplaypy")
    assert slug("Two commands") == "two-commands"
    assert slug("6. The head lr: 3e-4 vs 1e-3, 2026-12-05") == "6-the-head-lr-3e-4-vs-1e-3-2026-12-05"
    assert list(anchors("# A\n## A\n```\n# not a heading\n```\n### A\n")) == ["a", "a-1", "a-2"]


def test_broken_links_are_found(tmp_path):
    (tmp_path / "b.md").write_text("# Only heading\n")
    (tmp_path / "a.md").write_text("[ok](b.md#only-heading) [self](#top) [gone](c.md) [wrong](b.md#other)\n"
                                   "[web](https://example.com/x.md) ![image](missing.png)\n# Top\n"
                                   "```\n[in a code block](nowhere.md)\n```\n")
    assert broken_links(tmp_path / "a.md") == ["c.md (no such file)", "b.md#other (no such heading)"]


def test_every_relative_link_in_the_repository_resolves():
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert "README.md" in files and len(files) > 10
    broken = {f: b for f in files if (b := broken_links(ROOT / f))}
    assert not broken, f"broken links: {broken}"
