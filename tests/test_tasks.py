"""Tests for finetune.data.tasks: BIG-bench rows (read independently from the cached sdist, the miniature of
tests/mini_bigbench.py), splitting, JSONL validation, the Hub row converters, and the SQuAD F1."""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import mini_bigbench
from finetune.data import tasks
from finetune.common.cache import cache_dir, pip_download
from finetune.common.errors import ZotuneError
from finetune.data.tasks import Example, f1_score, list_bigbench_tasks, load_task, split_task_list

MEMBERS = {  # task name -> data file under benchmark_tasks/
    "cause_and_effect/one_sentence": "cause_and_effect/one_sentence/task.json",
    "strategyqa": "strategyqa/task.json",
    "winowhy": "winowhy/task.json",
    "arithmetic_words": "arithmetic_words/task.json",
    "squad_shifts": "squad_shifts/squaddev_v1.1.json",
    "squad_shifts/nyt": "squad_shifts/nyt_v1.0.json",
}
EVERYTHING = {"n_train": 10**6, "n_dev": 10**6, "n_test": 10**6}  # more than any task has: use all examples


@pytest.fixture(scope="module")
def raw_bigbench():
    """The raw JSON of the data files under test, read straight from the cached sdist with tarfile (the
    miniature that conftest.py writes: tests/mini_bigbench.py)."""
    archive = pip_download("bigbench==1.0.0", "bigbench-1.0.0")
    wanted = {mini_bigbench.ARCHIVE_TASKS + member: name for name, member in MEMBERS.items()}
    raw = {}
    with tarfile.open(archive, "r|gz") as tar:
        for info in tar:
            if info.name in wanted:
                raw[wanted[info.name]] = json.load(tar.extractfile(info))
                if len(raw) == len(wanted):
                    break
    assert len(raw) == len(wanted)
    return raw


@pytest.fixture(scope="module")
def bigbench_cache(tmp_path_factory):
    """A fresh zotune cache that shares the session cache's downloads/ folder (the sdist), with the data files
    under test extracted in one pass over the archive (which also lists the task names)."""
    downloads = cache_dir() / "downloads"
    root = tmp_path_factory.mktemp("zotune-cache")
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOTUNE_CACHE", str(root))
        tasks._scan_source(MEMBERS.values())
        yield root


def everything(task):
    return task.train + task.dev + task.test


def only(examples, predicate):
    found = [ex for ex in examples if predicate(ex)]
    assert len(found) == 1, f"{len(found)} matching examples"
    return found[0]


def gold_index(target_scores):
    scores = list(target_scores.values())
    return scores.index(max(scores))


# --- BIG-bench against the raw rows ------------------------------------------------------------------

def test_cause_and_effect_first_row(raw_bigbench, bigbench_cache):
    """A subtask whose rows have an empty input: the prompt is the task prefix and the two example prefixes."""
    raw = raw_bigbench["cause_and_effect/one_sentence"]
    row = raw["examples"][0]
    task = load_task("bigbench:cause_and_effect/one_sentence", **EVERYTHING)
    assert task.kind == "mc" and task.metric == "accuracy"
    assert len(everything(task)) == len(raw["examples"]) == 12
    options = tuple(" " + choice for choice in row["target_scores"])
    example = only(everything(task), lambda ex: ex.options == options)
    assert example.prompt == raw["task_prefix"] + "\nexample:\nanswer:"
    assert example.label == gold_index(row["target_scores"]) == 0
    assert example.options[0] == " The child started crying because the child hurt their knee 0."


def test_strategyqa_first_row(raw_bigbench, bigbench_cache):
    row = raw_bigbench["strategyqa"]["examples"][0]
    task = load_task("bigbench:strategyqa", **EVERYTHING)
    example = only(everything(task), lambda ex: row["input"] in ex.prompt)
    assert example.prompt == "Q: Is it common to see frost during some college commencements?\nA:"
    assert example.options == (" Yes", " No") == tuple(" " + key for key in row["target_scores"])
    assert example.label == gold_index(row["target_scores"]) == 0
    assert not example.is_generation


def test_winowhy_first_row(raw_bigbench, bigbench_cache):
    raw = raw_bigbench["winowhy"]
    row = raw["examples"][0]
    examples = everything(load_task("bigbench:winowhy", **EVERYTHING))
    assert len(examples) == len(raw["examples"]) == 40
    example = only(examples, lambda ex: row["input"] in ex.prompt)
    assert example.prompt.startswith("Please answer the following questions about which words certain pronouns")
    assert example.prompt.endswith(row["input"] + "\nThe above reasoning is")
    assert example.options == (" correct", " incorrect")
    assert example.label == gold_index(row["target_scores"]) == 1


def test_generation_task_takes_bigbench_default_prefixes_and_drops_blank_targets(raw_bigbench, bigbench_cache):
    """Rows with a target and no target_scores are generation; without prefixes of its own a task gets BIG-bench's
    defaults "\\nQ: " and "\\nA: ", and a blank target is not an answer."""
    raw = raw_bigbench["arithmetic_words"]
    task = load_task("bigbench:arithmetic_words", **EVERYTHING)
    assert task.kind == "gen" and len(everything(task)) == len(raw["examples"]) == 20
    example = only(everything(task), lambda ex: ex.prompt == "Q: 0 plus one is\nA:")
    assert example.is_generation and example.answers == (" 1",) and example.options == ()


def test_renamed_label_words(bigbench_cache):
    """bigbench:<name>:OLD=NEW renames an option everywhere it occurs, after the same separator, and changes
    nothing else: the same examples in the same splits, the same labels."""
    plain = load_task("bigbench:strategyqa", seed=3, n_train=40, n_dev=10, n_test=10)
    renamed = load_task("bigbench:strategyqa:No=Nope,Yes=Sure", seed=3, n_train=40, n_dev=10, n_test=10)
    for a, b in zip(everything(plain), everything(renamed)):
        assert (b.prompt, b.label) == (a.prompt, a.label)
        assert b.options == tuple({" Yes": " Sure", " No": " Nope"}[o] for o in a.options)


def test_a_task_list_keeps_each_specs_renamings_together():
    """meta-train --tasks (and benchmarks/task_search.py) split a list on commas; an OLD=NEW piece continues
    the renamings of the spec before it instead of becoming a task of its own."""
    import cli

    text = "bigbench:strategyqa:No=Nope,Yes=Sure,bigbench:hyperbaton,data/my.jsonl,bigbench:winowhy:correct=right"
    want = ["bigbench:strategyqa:No=Nope,Yes=Sure", "bigbench:hyperbaton", "data/my.jsonl",
            "bigbench:winowhy:correct=right"]
    assert split_task_list(text) == want
    args = cli.parser().parse_args(["meta-train", "--tasks", text, "--out", "t.safetensors"])
    assert args.tasks == want


@pytest.mark.parametrize("spec, message", [
    ("bigbench:strategyqa:Maybe=Perhaps", "no option is 'Maybe'; its options include 'No', 'Yes'"),
    ("bigbench:strategyqa:Yes", "bad label renaming 'Yes'"),
    ("bigbench:strategyqa:Yes=", "bad label renaming"),
    ("bigbench:strategyqa:Yes=No", "the same option twice"),
    ("bigbench:squad_shifts:a=b", "only a multiple-choice task's label words can be renamed"),
])
def test_renaming_mistakes(bigbench_cache, spec, message):
    with pytest.raises(ZotuneError, match=message):
        load_task(spec)


def squad_questions(raw):
    return [(article, paragraph, qa) for article in raw["data"] for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]]


def test_squad_shifts_is_its_squad_file(raw_bigbench, bigbench_cache):
    """bigbench:squad_shifts reads squaddev_v1.1.json, one example per question, in the squad template."""
    questions = squad_questions(raw_bigbench["squad_shifts"])
    assert len(questions) == 4 * 3 * 2  # articles x paragraphs x questions in the miniature
    task = load_task("bigbench:squad_shifts", **EVERYTHING)
    assert task.kind == "gen" and task.metric == "f1"
    assert len(everything(task)) == len(questions)
    article, paragraph, qa = questions[0]
    example = only(everything(task), lambda ex: f"\nQuestion: {qa['question']}\nAnswer:" in ex.prompt)
    assert qa["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert example.prompt.startswith(f"Title: {article['title']}\nContext: {paragraph['context'][:40]}")
    assert example.answers == (" Denver Broncos",)  # three identical gold answers in the file
    assert example.is_generation and example.options == ()


def test_squad_shifts_domain(raw_bigbench, bigbench_cache):
    examples = everything(load_task("bigbench:squad_shifts/nyt", **EVERYTHING))
    assert len(examples) == len(squad_questions(raw_bigbench["squad_shifts/nyt"])) == 3 * 3 * 2


def test_task_names(bigbench_cache):
    """JSON tasks and subtasks with examples, and squad_shifts' data files; not a task split into subtasks,
    not a programmatic task."""
    names = list_bigbench_tasks()
    assert names == mini_bigbench.NAMES
    assert "cause_and_effect" not in names and "programmatic_only" not in names
    assert (bigbench_cache / "bigbench" / "task_names.txt").is_file()


def test_extracted_files_are_reused(bigbench_cache, monkeypatch):
    assert (bigbench_cache / "bigbench" / "strategyqa" / "task.json").is_file()
    assert not list((bigbench_cache / "bigbench").rglob(".tmp-*"))

    def no_archive(*args, **kwargs):
        raise AssertionError("the archive was opened again")

    monkeypatch.setattr(tarfile, "open", no_archive)
    assert load_task("bigbench:strategyqa").test


@pytest.mark.parametrize("name, hint", [
    ("strategyqaa", "did you mean bigbench:strategyqa"),
    ("cause_and_effect", "bigbench:cause_and_effect/one_sentence"),
    ("squad_shifts/times", "did you mean bigbench:squad_shifts"),
    ("../winowhy", "bad BIG-bench task name"),
])
def test_bigbench_name_mistakes(bigbench_cache, name, hint):
    with pytest.raises(ZotuneError, match=hint):
        load_task(f"bigbench:{name}")


def test_bigbench_splits_are_deterministic(bigbench_cache):
    first = load_task("bigbench:strategyqa", seed=1, n_train=50, n_dev=20, n_test=30)
    assert (len(first.train), len(first.dev), len(first.test)) == (50, 20, 30)
    assert first == load_task("bigbench:strategyqa", seed=1, n_train=50, n_dev=20, n_test=30)
    assert first.train != load_task("bigbench:strategyqa", seed=2, n_train=50, n_dev=20, n_test=30).train


def _fresh_cache(monkeypatch, root: Path) -> Path:
    monkeypatch.setenv("ZOTUNE_CACHE", str(root))
    return root


def test_a_checkout_gives_the_same_tasks_as_the_sdist(tmp_path, monkeypatch, bigbench_cache):
    """ZOTUNE_BIGBENCH=<a checkout of the BIG-bench repository>: the same task names and the same examples in the
    same splits as the sdist (read through tarfile, another path), and nothing is downloaded."""
    from_sdist = load_task("bigbench:strategyqa", seed=4, n_train=30, n_dev=10, n_test=10)
    squad_from_sdist = load_task("bigbench:squad_shifts/nyt", **EVERYTHING)
    checkout = tmp_path / "BIG-bench"
    for member, content in mini_bigbench.FILES.items():
        path = checkout / "bigbench" / "benchmark_tasks" / member
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    _fresh_cache(monkeypatch, tmp_path / "cache")
    monkeypatch.setenv("ZOTUNE_BIGBENCH", str(checkout))
    monkeypatch.setattr(tasks, "pip_download", lambda *a: pytest.fail("downloaded despite ZOTUNE_BIGBENCH"))
    assert list_bigbench_tasks() == mini_bigbench.NAMES
    assert load_task("bigbench:strategyqa", seed=4, n_train=30, n_dev=10, n_test=10) == from_sdist
    assert load_task("bigbench:squad_shifts/nyt", **EVERYTHING) == squad_from_sdist
    with pytest.raises(ZotuneError, match="did you mean bigbench:strategyqa"):
        load_task("bigbench:strategyqaa")


def test_bigbench_points_at_an_sdist_anywhere(tmp_path, monkeypatch):
    sdist = mini_bigbench.write_sdist(tmp_path / "elsewhere.tar.gz", mini_bigbench.FILES)
    _fresh_cache(monkeypatch, tmp_path / "cache")
    monkeypatch.setenv("ZOTUNE_BIGBENCH", str(sdist))
    monkeypatch.setattr(tasks, "pip_download", lambda *a: pytest.fail("downloaded despite ZOTUNE_BIGBENCH"))
    assert load_task("bigbench:winowhy").kind == "mc"


def test_bigbench_source_mistakes_are_one_line_errors(tmp_path, monkeypatch):
    _fresh_cache(monkeypatch, tmp_path / "cache")
    monkeypatch.setenv("ZOTUNE_BIGBENCH", str(tmp_path))  # a folder, but not a checkout
    with pytest.raises(ZotuneError, match=r"ZOTUNE_BIGBENCH=.* is neither a file nor a folder with "
                                          r"bigbench/benchmark_tasks/; set it to the path of bigbench-1.0.0.tar.gz"):
        load_task("bigbench:strategyqa")


@pytest.mark.parametrize("where", ["cache", "elsewhere"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_archive_is_a_one_line_error(tmp_path, monkeypatch, where, damage):
    """Not gzip at all, or cut short inside a member's data: one line that says what to do, which depends on
    whether the file is the cache's own download (delete it) or the user's (replace it); nothing extracted."""
    cache = _fresh_cache(monkeypatch, tmp_path / "cache")
    folder = cache / "downloads" if where == "cache" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    sdist = mini_bigbench.write_sdist(folder / "bigbench-1.0.0.tar.gz", mini_bigbench.FILES)
    data = sdist.read_bytes()
    if damage == "garbage":
        sdist.write_bytes(b"not a gzip file" * 100)
    else:  # the gzip stream ends inside the first member's data
        import gzip as gz
        raw = gz.decompress(data)
        sdist.write_bytes(gz.compress(raw[:512 + 100]))
    if where == "elsewhere":
        monkeypatch.setenv("ZOTUNE_BIGBENCH", str(sdist))
    with pytest.raises(ZotuneError) as error:
        load_task("bigbench:strategyqa")
    message = str(error.value)
    assert "\n" not in message and f"the BIG-bench archive {sdist} is damaged" in message
    assert message.endswith("delete it and run again to download it anew" if where == "cache"
                            else "replace it, or unset ZOTUNE_BIGBENCH")
    assert not (cache / "bigbench" / "strategyqa").exists()


def test_fetch_with_no_tasks_fetches_the_model_alone(monkeypatch, capsys):
    """What `make test` runs before the suite (`cli.py fetch --tasks`): the model, and no BIG-bench download."""
    import cli

    monkeypatch.setattr(tasks, "pip_download", lambda *a: pytest.fail("fetch --tasks touched the BIG-bench sdist"))
    assert cli.main(["fetch", "--tasks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: ") and "task " not in out


def test_fetch_prints_the_split_a_finetune_takes(tmp_path, capsys):
    """`fetch` reports the splits of a fine-tune run with the default --n-train/--n-dev/--n-test (1000/100/200),
    not load_task's own defaults."""
    import cli

    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"input": f"q{i}", "options": ["a", "b"], "label": i % 2}) + "\n"
                            for i in range(1500)))
    assert cli.main(["fetch", "--tasks", str(path)]) == 0
    assert "1000 train, 100 dev, 200 test examples (a fine-tune's default split)" in capsys.readouterr().out


def test_a_package_index_without_the_sdist_is_a_one_line_error(tmp_path, monkeypatch):
    """What our machines met on 2026-12-05: pip finds no bigbench==1.0.0 and the index lists only 0.0.1. The
    error names both answers and what to do; nothing is left in downloads/."""
    import io
    import urllib.request

    from finetune.common import cache

    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    pip_said = "ERROR: No matching distribution found for bigbench==1.0.0"
    monkeypatch.setattr(cache.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "Looking in links\n" + pip_said))
    index = {"files": [{"filename": "bigbench-0.0.1.tar.gz", "url": "unused", "hashes": {"sha256": "0"}}]}
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **kw: io.BytesIO(json.dumps(index).encode()))
    with pytest.raises(ZotuneError) as error:
        pip_download("bigbench==1.0.0", "bigbench-1.0.0")
    message = str(error.value)
    assert "\n" not in message and message.startswith("could not download bigbench==1.0.0")
    assert pip_said in message and "the index lists no bigbench-1.0.0 file (it lists bigbench-0.0.1.tar.gz)" in message
    assert f"place the file in {tmp_path / 'cache' / 'downloads'}" in message
    assert not list((tmp_path / "cache" / "downloads").iterdir())


# --- Splitting, on JSONL files --------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def qa_file(tmp_path):
    return write_jsonl(tmp_path / "qa.jsonl", [{"input": f"Q{i}:", "target": f" a{i}"} for i in range(100)])


def test_jsonl_splits(qa_file):
    task = load_task(qa_file, seed=3, n_train=40, n_dev=10, n_test=20)
    assert task.name == qa_file and task.kind == "gen"
    assert (len(task.train), len(task.dev), len(task.test)) == (40, 10, 20)
    prompts = [{ex.prompt for ex in split} for split in (task.train, task.dev, task.test)]
    assert sum(map(len, prompts)) == 70 and len(set.union(*prompts)) == 70  # distinct and disjoint
    assert task == load_task(qa_file, seed=3, n_train=40, n_dev=10, n_test=20)
    other = load_task(qa_file, seed=4, n_train=40, n_dev=10, n_test=20)
    assert other.train != task.train and other.test != task.test
    assert load_task(qa_file, seed=3, n_train=5, n_dev=10, n_test=20).test == task.test  # test is cut first


@pytest.mark.parametrize("count, sizes", [(100, (60, 20, 20)), (10, (6, 2, 2)), (3, (1, 1, 1))])
def test_small_tasks_keep_most_examples_for_training(tmp_path, count, sizes):
    path = write_jsonl(tmp_path / "t.jsonl", [{"input": f"x{i}", "target": "y"} for i in range(count)])
    task = load_task(path, n_train=1000, n_dev=500, n_test=1000)
    assert (len(task.train), len(task.dev), len(task.test)) == sizes


def test_too_small_task(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"input": "x", "target": "y"}] * 2)
    with pytest.raises(ZotuneError, match="only 2 usable examples"):
        load_task(path)


def test_jsonl_rows_kept_as_given(tmp_path):
    rows = [{"input": f"Is {i} even?", "options": ["no", "yes"], "label": 1 - i % 2, "note": "ignored"}
            for i in range(10)]
    path = write_jsonl(tmp_path / "mc.jsonl", [rows[0], "", "   "] + rows[1:])  # blank lines are skipped
    task = load_task(path)
    assert task.kind == "mc" and task.metric == "accuracy" and len(everything(task)) == 10
    assert Example("Is 3 even?", ("no", "yes"), 0) in everything(task)


GOOD_MC = {"input": "2+2=", "options": [" 4", " 5"], "label": 0}


@pytest.mark.parametrize("bad, message", [
    ("{not json", "invalid JSON"),
    ('["input", "target"]', "expected a JSON object"),
    ({"options": [" a", " b"], "label": 0}, "'input' must be a string"),
    ({"input": 3, "target": "x"}, "'input' must be a string"),
    ({"input": "x"}, "give either 'options' and 'label' or 'target'"),
    ({"input": "x", "target": "y", "options": ["a", "b"], "label": 0}, "give either"),
    ({"input": "x", "options": "a b", "label": 0}, "'options' must be a list of"),
    ({"input": "x", "options": ["a", 2], "label": 0}, "'options' must be a list of non-empty strings"),
    ({"input": "x", "options": ["a", ""], "label": 0}, "'options' must be a list of non-empty strings"),
    ({"input": "x", "options": ["a"], "label": 0}, "at least 2 choices"),
    ({"input": "x", "options": ["a", "b"]}, "'label' must be an integer"),
    ({"input": "x", "options": ["a", "b"], "label": True}, "'label' must be an integer"),
    ({"input": "x", "options": ["a", "b"], "label": 2}, "'label' 2 is out of range; use 0 to 1"),
    ({"input": "x", "options": ["a", "b"], "label": -1}, "out of range"),
    ({"input": "x", "target": ["y"]}, "'target' must be a non-empty string"),
    ({"input": "x", "target": " "}, "'target' must be a non-empty string"),
    ({"input": "x", "target": "y"}, "line 3: a generation row, but line 1 is a multiple-choice row"),
])
def test_jsonl_mistakes_name_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD_MC, "", bad, GOOD_MC])
    with pytest.raises(ZotuneError, match=message) as error:
        load_task(path)
    assert f"{path}, line 3:" in str(error.value)
    assert "\n" not in str(error.value)


def test_jsonl_missing_or_empty(tmp_path):
    with pytest.raises(ZotuneError, match="does not exist"):
        load_task(str(tmp_path / "missing.jsonl"))
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ZotuneError, match=re.escape(f"task file {empty} has no examples")):
        load_task(empty)


def test_unknown_spec_and_bad_sizes():
    with pytest.raises(ZotuneError, match=r"unknown task 'glue'; use one of sst2, copa, .*bigbench:<name>"):
        load_task("glue")
    with pytest.raises(ZotuneError, match="must not be negative"):
        load_task("sst2", n_dev=-1)
    assert tasks.TASK_NAMES == ("sst2", "copa", "boolq", "cb", "wsc", "rte", "squad", "drop")


# --- Hub tasks: row converters on rows shaped like the real ones, sampling with a fake Hub -------------

def convert(name, row):
    return tasks._HUB_TASKS[name].convert(row)


def test_sst2_row():
    row = {"sentence": "hide new secretions from the parental units ", "label": 0, "idx": 0}
    assert convert("sst2", row) == Example("hide new secretions from the parental units It was",
                                           (" terrible", " great"), 0)


def test_copa_rows():
    cause = {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
             "choice2": "The grass was cut.", "question": "cause", "idx": 0, "label": 0}
    assert convert("copa", cause) == Example("My body cast a shadow over the grass because",
                                             (" the sun was rising.", " the grass was cut."), 0)
    effect = {"premise": "I tipped the bottle.", "choice1": "I'm thirsty.",
              "choice2": "The liquid in the bottle poured out.", "question": "effect", "idx": 3, "label": 1}
    assert convert("copa", effect) == Example("I tipped the bottle so",
                                              (" I'm thirsty.", " the liquid in the bottle poured out."), 1)


def test_boolq_row():
    row = {"question": "do iran and afghanistan speak the same language", "answer": True,
           "passage": "Persian language -- Persian is a Western Iranian language."}
    assert convert("boolq", row) == Example(
        "Persian language -- Persian is a Western Iranian language. Do iran and afghanistan speak the same "
        "language?", (" No", " Yes"), 1)


def test_cb_row():
    row = {"premise": "It was a complex language. Not written down but handed down.",
           "hypothesis": "the language was peeled down", "label": 0, "idx": 0}
    assert convert("cb", row) == Example(
        'Suppose It was a complex language. Not written down but handed down. Can we infer that "the '
        'language was peeled down"? Yes, No, or Maybe?', (" Yes", " No", " Maybe"), 0)
    assert convert("cb", {**row, "label": 2}).options[2] == " Maybe"  # neutral


def test_wsc_row():
    row = {"text": "Mark told Pete many lies about himself, which Pete included in his book. He should have "
                   "been more truthful.", "span1_index": 0, "span2_index": 13, "span1_text": "Mark",
           "span2_text": "He", "idx": 0, "label": 1}
    question = ' In the previous sentence, does the pronoun "he" refer to Mark? Yes or No?'
    assert convert("wsc", row) == Example(row["text"] + question, (" No", " Yes"), 1)


def test_rte_row():
    row = {"premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
           "hypothesis": "Weapons of Mass Destruction Found in Iraq.", "label": 1, "idx": 0}
    assert convert("rte", row) == Example(
        'No Weapons of Mass Destruction Found in Iraq Yet. Does this mean that "Weapons of Mass Destruction '
        'Found in Iraq." is true? Yes or No?', (" Yes", " No"), 1)


def test_squad_row():
    row = {"id": "56be4db0acb8001400a502ec", "title": "Super_Bowl_50", "context": "Super Bowl 50 was ...",
           "question": "Which NFL team represented the AFC at Super Bowl 50?",
           "answers": {"text": ["Denver Broncos", "Denver Broncos", " the Broncos"],
                       "answer_start": [177, 177, 0]}}
    assert convert("squad", row) == Example(
        "Title: Super_Bowl_50\nContext: Super Bowl 50 was ...\nQuestion: Which NFL team represented the AFC at "
        "Super Bowl 50?\nAnswer:", answers=(" Denver Broncos", " the Broncos"))


def test_drop_rows():
    row = {"section_id": "nfl_2201", "query_id": "f16c0ee7", "passage": "To start the season, ...",
           "question": "How many points did the Buccaneers need to tie?",
           "answers_spans": {"spans": ["3"], "types": ["number"]}}
    assert convert("drop", row) == Example(
        "Passage: To start the season, ...\nQuestion: How many points did the Buccaneers need to tie?\nAnswer:",
        answers=(" 3",))
    assert convert("drop", {**row, "answers_spans": {"spans": [""], "types": ["number"]}}) is None


def fake_hub(monkeypatch, results):
    """Make datasets.load_dataset return (or raise) the given results in turn, recording its calls."""
    import datasets

    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def sst2_rows(prefix, count):
    return [{"sentence": f"{prefix} {i}", "label": i % 2, "idx": i} for i in range(count)]


def test_hub_sampling(monkeypatch):
    splits = {"train": sst2_rows("train", 300), "validation": sst2_rows("validation", 50)}
    calls = fake_hub(monkeypatch, [splits, splits])
    task = load_task("sst2", seed=5, n_train=100, n_dev=20, n_test=1000)
    assert calls[0] == (("nyu-mll/glue", "sst2"), {})
    assert (len(task.train), len(task.dev), len(task.test)) == (100, 20, 50)
    assert all(ex.prompt.startswith("train") for ex in task.train + task.dev)
    assert all(ex.prompt.startswith("validation") for ex in task.test)
    assert not {ex.prompt for ex in task.train} & {ex.prompt for ex in task.dev}
    assert task == load_task("sst2", seed=5, n_train=100, n_dev=20, n_test=1000)


def test_hub_script_repository_falls_back_to_parquet_export(monkeypatch):
    rows = [{"premise": f"p{i}", "hypothesis": "h", "label": i % 3, "idx": i} for i in range(20)]
    script_error = RuntimeError("Dataset scripts are no longer supported, but found super_glue.py")
    calls = fake_hub(monkeypatch, [script_error, {"train": rows, "validation": rows}])
    assert load_task("cb").kind == "mc"
    assert calls[1] == (("parquet",), {"data_files": {
        "train": "hf://datasets/aps/super_glue@refs/convert/parquet/cb/train/*.parquet",
        "validation": "hf://datasets/aps/super_glue@refs/convert/parquet/cb/validation/*.parquet"}})


def test_hub_offline_is_a_zotune_error(tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    script = ("from finetune.data.tasks import load_task\n"
              "from finetune.common.errors import ZotuneError\n"
              "try:\n    load_task('sst2')\nexcept ZotuneError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cannot load 'sst2' from the Hugging Face Hub (offline?): ")
    assert "use bigbench:<name> or a JSONL file offline" in done.stdout


# --- F1 ------------------------------------------------------------------------------------------------

def test_f1_score():
    assert f1_score(" Denver Broncos", [" Denver Broncos"]) == 1.0
    assert f1_score("the Denver Broncos!", ["Denver Broncos"]) == 1.0  # articles and punctuation ignored
    assert f1_score("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert f1_score("Broncos", ["Carolina Panthers", "the Broncos"]) == 1.0  # best gold answer
    assert f1_score("Panthers", ["Denver Broncos"]) == 0.0
    assert f1_score("anything", []) == 0.0


def test_small_task_honours_a_small_held_out_request(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"input": f"x{i}", "target": "y"} for i in range(80)])
    task = load_task(path, n_train=1000, n_dev=100, n_test=4)
    assert (len(task.train), len(task.dev), len(task.test)) == (60, 16, 4)
