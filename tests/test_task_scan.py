"""benchmarks/task_scan.py: which BIG-bench tasks it keeps and the figures it reports, on a hand-made archive."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from task_scan import scan  # noqa: E402

from finetune.data.models import _byte_tokenizer  # noqa: E402
from mini_bigbench import write_sdist  # noqa: E402


def _mc(n: int, options=("no", "yes"), prompt="x", gold=lambda i: i % 3 == 0) -> dict:
    """n multiple-choice examples; option 1 is gold where gold(i), else option 0."""
    return {"examples": [{"input": prompt, "target_scores": {o: int((k == 1) == bool(gold(i)))
                                                             for k, o in enumerate(options)}}
                         for i in range(n)]}


def _archive(path: Path, tasks: dict) -> Path:
    """An archive in the sdist's own layout with each task's task.json."""
    return write_sdist(path, {name + "/task.json": task for name, task in tasks.items()})


def test_scan_keeps_short_multiple_choice_tasks_and_reports_them(tmp_path):
    tasks = {
        "kept": _mc(12, prompt="abcd"),                                     # 12 usable examples
        "parent/sub": _mc(10, options=("no", "yes", "maybe"), prompt="ab"),  # a subtask, 3 options
        "few": _mc(5),                                                      # too few examples
        "long_option": _mc(12, options=("no", "a much longer option")),      # an option too long
        "many_options": _mc(12, options=tuple("abcdefg")),                  # too many options
        "generation": {"examples": [{"input": "q", "target": "a"}] * 20},     # not multiple choice
    }
    tok = _byte_tokenizer()
    rows = scan(_archive(tmp_path / "bb.tar.gz", tasks), tok, min_examples=10, max_options=4,
                max_option_tokens=6)
    assert [r["task"] for r in rows] == ["parent/sub", "kept"]  # shortest prompt first
    sub, kept = rows
    # byte tokens: " yes"/" maybe" after the prompt's space; "maybe" is the longest option: 6 bytes
    assert sub["options"] == 3 and sub["option_tokens"] == 6 and sub["examples"] == 10
    # gold is option 1 ("yes") for i = 0, 3, 6, 9 of 12: "no" is the majority, 8 of 12
    assert kept["majority"] == round(8 / 12, 3) and kept["labels"][0] == "no"
    # BIG-bench's default prefixes wrap the input: "\nQ: abcd\nA:" after tidying, byte tokens only
    assert kept["prompt_tokens"] == len("Q: abcd\nA:") and sub["prompt_tokens"] == len("Q: ab\nA:")
