"""benchmarks/packaged_tasks.py: the rows it builds from a package's data file, on a hand-made wheel."""
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import packaged_tasks  # noqa: E402

from finetune.data.tasks import load_task  # noqa: E402

LEXICON = "".join(f"{w}\t{m}\t0.5\t[1, 2]\n" for w, m in
                  [("$:", -1.5), ("good", 1.9), ("meh", -0.4), ("awful", -2.5), ("top-notch", 2.0), ("fine", 1.5),
                   ("nope", -1.5), ("bad", -1.49)])


def test_vader_polarity_keeps_clear_alphabetic_words_in_order(tmp_path, monkeypatch):
    wheel = tmp_path / "vaderSentiment-3.3.2-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("vaderSentiment/vader_lexicon.txt", LEXICON)
    monkeypatch.setattr(packaged_tasks, "pip_download", lambda requirement, prefix: wheel)
    rows = packaged_tasks.vader_polarity()
    # '$:' and 'top-notch' are not letters only; 'meh' and 'bad' are within 1.5 of neutral; 1.5 itself is kept
    assert [(r["input"].split('"')[1], r["label"]) for r in rows] == [("good", 0), ("awful", 1), ("fine", 0),
                                                                      ("nope", 1)]
    assert rows[0] == {"input": 'Is the word "good" positive or negative? Answer:',
                       "options": [" positive", " negative"], "label": 0}
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(str(path), n_train=2, n_dev=1, n_test=1)  # a valid --task file
    assert task.kind == "mc" and len(task.train) + len(task.dev) + len(task.test) == 4
