"""Readers that cannot be crashed: any bytes give data or the toolkit's own error, never another exception.

Property-based (hypothesis) over the CoNLL, CSV, JSONL and plain-text readers, the
tokenizers, the normalisers and the vocabulary. Inputs mix raw bytes with text
built from the characters these formats care about (separators, quotes, BIO
prefixes, JSON punctuation, NUL, a BOM, Unicode line breaks), so the examples reach
past the first line. Each error must also name the file it is about.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from toolkit.data.readers import read_conll, read_table, read_text
from toolkit.data.text import NORMALIZERS, PAD, TOKENIZERS, UNK, Vocab, normalize, shape, tokenize
from toolkit.errors import ToolkitError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = ["\t", " ", "  ", "\n", "\n\n", "\r\n", "\r", ",", ";", '"', "'", "\\", "B-", "I-", "O", "B-PER",
             "I-PER", "I-LOC", "x", "Harry", "text", "label", "{", "}", ":", "[", "]", "null", "1e999",
             "-DOCSTART-", "\x00", "\ufeff", "é", "\u2028", "\x85", "\x0b", "\x1c", "😀", "9" * 5000]
NAMES = st.text(alphabet="abcdefghij\\\"'{}[]:,-", max_size=6)


def _texty() -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(lambda parts: "".join(parts).encode("utf-8"))


def _json_lines() -> st.SearchStrategy[bytes]:
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
    value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
                         max_leaves=6)
    row = st.one_of(st.dictionaries(st.sampled_from(["text", "label", "t", "y"]) | NAMES, value, max_size=4), value)
    return st.lists(row, max_size=6).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode("utf-8"))


ANY_BYTES = st.one_of(st.binary(max_size=400), _texty())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def write(scratch, name: str, data: bytes):
    path = scratch / name
    path.write_bytes(data)
    return path


def names_the_file(error: ToolkitError, path) -> None:
    assert str(path) in str(error), f"the error does not name the file: {error}"
    assert "\n" not in str(error).rstrip(), f"not one line: {error!r}"


@SETTINGS
@given(data=ANY_BYTES)
def test_read_text_gives_text_or_a_data_error(scratch, data):
    path = write(scratch, "any.txt", data)
    try:
        text = read_text(path)
    except ToolkitError as e:
        names_the_file(e, path)
        return
    assert isinstance(text, str) and text.strip()


@SETTINGS
@given(data=ANY_BYTES, token_col=st.integers(-3, 3), tag_col=st.integers(-3, 3),
       sep=st.sampled_from(["\t", None, " ", ","]), scheme=st.sampled_from(["bio", None]))
def test_read_conll_gives_sentences_or_a_data_error(scratch, data, token_col, tag_col, sep, scheme):
    path = write(scratch, "any.conll", data)
    try:
        sentences = read_conll(path, token_col=token_col, tag_col=tag_col, sep=sep, scheme=scheme)
    except ToolkitError as e:
        names_the_file(e, path)
        return
    assert sentences
    for s in sentences:
        assert s["tokens"] and len(s["tokens"]) == len(s["tags"])
        assert all(isinstance(t, str) and t and t == t.strip() for t in s["tokens"] + s["tags"])
        if scheme == "bio":
            for prev, tag in zip(["O"] + s["tags"], s["tags"]):
                assert tag == "O" or tag[:2] in ("B-", "I-")
                assert not tag.startswith("I-") or prev[2:] == tag[2:]


def _check_table(path, text_col, label_col):
    try:
        rows = read_table(path, text_col=text_col, label_col=label_col)
    except ToolkitError as e:
        names_the_file(e, path)
        return
    assert rows
    for row in rows:
        assert set(row) == {"text", "label"}
        assert isinstance(row["text"], str) and row["text"].strip()
        assert isinstance(row["label"], str) and row["label"]
        row["text"].encode("utf-8")  # what the HF datasets cache will store
        row["label"].encode("utf-8")


@SETTINGS
@given(data=st.one_of(ANY_BYTES, _json_lines()), cols=st.sampled_from([("text", "label"), ("t", "y"), ("0", "1")]))
@example(data=b'text,label\n"two\nlines",x\n', cols=("text", "label"))  # was read as "twolines"
@example(data="text,label\nhello\u2028world,x\n".encode(), cols=("text", "label"))  # was a column error
def test_read_csv_gives_rows_or_a_data_error(scratch, data, cols):
    _check_table(write(scratch, "any.csv", data), *cols)


@SETTINGS
@given(data=st.one_of(_json_lines(), ANY_BYTES), cols=st.sampled_from([("text", "label"), ("t", "y")]))
@example(data=b"9" * 5000, cols=("text", "label"))  # was ValueError: Exceeds the limit (4300 digits)
@example(data=b"[" * 5000, cols=("text", "label"))  # was RecursionError
@example(data=b'{"text": "a\\ud800", "label": "x"}', cols=("text", "label"))  # a lone surrogate got through
@example(data='{"text": "a\u2028b", "label": "x"}'.encode(), cols=("text", "label"))  # was "not valid JSON"
def test_read_jsonl_gives_rows_or_a_data_error(scratch, data, cols):
    _check_table(write(scratch, "any.jsonl", data), *cols)


def test_found_by_fuzzing_quoted_newlines_and_unicode_separators_are_data(scratch):
    path = write(scratch, "q.csv", 'text,label\n"two\nlines",x\nhello\u2028world,y\n'.encode())
    assert read_table(path) == [{"text": "two\nlines", "label": "x"}, {"text": "hello\u2028world", "label": "y"}]
    path = write(scratch, "q.jsonl", '{"text": "a\u2028b", "label": "x"}\n'.encode())
    assert read_table(path) == [{"text": "a\u2028b", "label": "x"}]
    path = write(scratch, "q.conll", "Pot\x85ter\tB-PER\nx\tO\n".encode())
    assert read_conll(path) == [{"tokens": ["Pot\x85ter", "x"], "tags": ["B-PER", "O"]}]


@SETTINGS
@given(text=st.text(max_size=200) | _texty().map(lambda b: b.decode("utf-8")), kind=st.sampled_from(TOKENIZERS))
def test_tokenize_gives_non_blank_tokens_for_any_text(text, kind):
    tokens = tokenize(text, kind)
    if kind == "chars_with_spaces":  # one character a token; white space kept as single spaces between words
        assert all(isinstance(t, str) and len(t) == 1 for t in tokens)
        assert "".join(tokens) == " ".join(text.split())
    else:
        assert all(isinstance(t, str) and t and not t.isspace() for t in tokens)


@SETTINGS
@given(token=st.text(max_size=30), kind=st.sampled_from(NORMALIZERS))
def test_normalize_and_shape_take_any_token(token, kind):
    assert isinstance(normalize(token, kind), str)
    assert isinstance(shape(token), int)


@SETTINGS
@given(kind=st.text(max_size=12).filter(lambda k: k not in TOKENIZERS + NORMALIZERS))
def test_unknown_tokenizer_or_normaliser_is_a_toolkit_error(kind):
    with pytest.raises(ToolkitError):
        tokenize("some text", kind)
    with pytest.raises(ToolkitError):
        normalize("token", kind)


@SETTINGS
@given(tokens=st.lists(st.text(max_size=6) | st.sampled_from([PAD, UNK]), max_size=60),
       min_count=st.one_of(st.integers(-2, 4), st.floats(allow_nan=True), st.text(max_size=3), st.none()),
       max_size=st.one_of(st.none(), st.integers(0, 10)), probe=st.lists(st.text(max_size=6), max_size=20))
def test_vocab_build_and_encode(tokens, min_count, max_size, probe):
    try:
        vocab = Vocab.build(tokens, min_count=min_count, max_size=max_size)
    except ToolkitError:
        assert not (isinstance(min_count, int) and not isinstance(min_count, bool) and min_count >= 1)
        return
    assert vocab.itos[:2] == [PAD, UNK] and len(set(vocab.itos)) == len(vocab)
    ids = vocab.encode(probe + tokens)
    assert all(0 < i < len(vocab) or (i == 0 and t == PAD) for i, t in zip(ids, probe + tokens))
    for t in tokens:
        if t in vocab.stoi:
            assert vocab.itos[vocab.encode([t])[0]] == t


# ----------------------------------------------------------------------------- real-valued sequences
TS_FRAGMENTS = ["@problemName x\n", "@dimensions 2\n", "@dimensions x\n", "@classLabel true a b\n",
                "@classLabel true\n", "@classLabel\n", "@targetLabel true\n", "@timeStamps true\n", "@data\n", "#c\n",
                "1", "2.5", "-3e2", ",", ":", "?", "nan", "inf", "-inf", "1e999", "a", "b", "\n", "\r\n", " ", "\x00",
                "\ufeff", "😀"]


def _ts_text() -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(TS_FRAGMENTS), max_size=50).map(lambda parts: "".join(parts).encode("utf-8"))


def _check_series(rows, labelled: bool = True) -> None:
    import numpy as np

    assert rows
    for row in rows:
        x = row["x"]
        assert x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] >= 1 and x.dtype == np.float32
        assert np.isfinite(x).all(), "a missing or infinite value got through"


@SETTINGS
@given(data=st.one_of(_ts_text(), ANY_BYTES), missing=st.sampled_from(["error", "interpolate"]))
@example(data=b"@classLabel\n@data\n1:a\n", missing="error")
@example(data=b"@data\n?,1:?,2\n", missing="interpolate")
def test_read_ts_gives_sequences_or_a_data_error(scratch, data, missing):
    from toolkit.data.series import read_ts

    path = write(scratch, "any.ts", data)
    try:
        rows = read_ts(path, missing=missing)
    except ToolkitError as e:
        names_the_file(e, path)
        return
    _check_series(rows)


def _long_csv() -> st.SearchStrategy[bytes]:
    cell = st.sampled_from(["s1", "s2", "0", "1", "2", "0.5", "-1", "", "?", "nan", "inf", "x", '"', "a,b"])
    row = st.lists(cell, min_size=2, max_size=5).map(",".join)
    return st.lists(row, max_size=12).map(lambda rows: ("id,time,f,label\n" + "\n".join(rows)).encode("utf-8"))


@SETTINGS
@given(data=st.one_of(_long_csv(), ANY_BYTES), missing=st.sampled_from(["error", "interpolate"]),
       time_col=st.sampled_from(["time", None]))
@example(data=b'"\x00\n\x00', missing="error", time_col="time")  # a quoted header name holding a newline
@example(data=b'id,time,f,label\n"a\nb",1,0.5,x\n"a\nb",1,0.5,x\n', missing="error", time_col="time")
@example(data=b'id,time,f,label\na,1,0.5,"x\ny"\na,2,0.5,z\n', missing="error", time_col="time")
def test_read_long_csv_gives_sequences_or_a_data_error(scratch, data, missing, time_col):
    from toolkit.data.series import read_long_csv

    path = write(scratch, "any.csv", data)
    try:
        rows = read_long_csv(path, time_col=time_col, missing=missing)
    except ToolkitError as e:
        names_the_file(e, path)
        return
    _check_series(rows)


def _npz_bytes() -> st.SearchStrategy[bytes]:
    import io as _io

    import numpy as np

    value = st.one_of(st.floats(width=32), st.integers(-3, 3))

    def build(spec):
        kind, n, t, f, values, cut, lengths = spec
        buf = _io.BytesIO()
        grid = np.resize(np.array(values or [0.0], dtype=np.float64), (n, t, f))
        arrays = {"x": grid} if kind == "x" else {f"x_{i}": grid[i] for i in range(n)} if kind == "list" else {"y": grid}
        if lengths is not None:
            arrays["lengths"] = np.array(lengths[:n])
        arrays["y"] = np.arange(n)
        np.savez(buf, **arrays)
        data = buf.getvalue()
        return data[:cut] if cut else data  # a truncated archive too

    spec = st.tuples(st.sampled_from(["x", "list", "none"]), st.integers(0, 3), st.integers(0, 4), st.integers(0, 2),
                     st.lists(value, max_size=10), st.one_of(st.none(), st.integers(0, 300)),
                     st.one_of(st.none(), st.lists(st.integers(-1, 5), max_size=4)))
    return spec.map(build)


@SETTINGS
@given(data=st.one_of(_npz_bytes(), ANY_BYTES), missing=st.sampled_from(["error", "interpolate"]))
def test_read_npz_gives_sequences_or_a_data_error(scratch, data, missing):
    from toolkit.data.series import read_npz

    path = write(scratch, "any.npz", data)
    try:
        rows = read_npz(path, missing=missing)
    except ToolkitError as e:
        names_the_file(e, path)
        return
    _check_series(rows)
