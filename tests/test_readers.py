"""Reading the user's files: CoNLL columns for tagging, CSV / JSONL for classification.

Every unreadable file is a DataError naming the file and, where there is one, the line.
"""

from __future__ import annotations

import json

import pytest

from toolkit.data.readers import read_conll, read_table
from toolkit.errors import DataError


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- CoNLL
def test_conll_tab_separated_sentences_split_on_blank_lines(tmp_path):
    path = write(tmp_path, "a.conll", "Harry\tB-person\nPotter\tI-person\nrules\tO\n\n\nLondon\tB-geo-loc\n")
    assert read_conll(path) == [
        {"tokens": ["Harry", "Potter", "rules"], "tags": ["B-person", "I-person", "O"]},
        {"tokens": ["London"], "tags": ["B-geo-loc"]},
    ]


def test_conll_any_whitespace_separator(tmp_path):
    path = write(tmp_path, "a.conll", "Harry   B-person\nPotter \t I-person\n\nhi O\n")
    assert read_conll(path, sep=None) == [
        {"tokens": ["Harry", "Potter"], "tags": ["B-person", "I-person"]},
        {"tokens": ["hi"], "tags": ["O"]},
    ]


def test_conll_token_and_tag_column_choice(tmp_path):
    # CoNLL-2003 layout: token POS chunk NER
    path = write(tmp_path, "a.conll", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    assert read_conll(path, sep=None) == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
        {"tokens": ["Peter"], "tags": ["B-PER"]},
    ]
    pos = read_conll(path, sep=None, token_col=0, tag_col=1, scheme=None)
    assert pos[0] == {"tokens": ["EU", "rejects"], "tags": ["NNP", "VBZ"]}


def test_conll_docstart_lines_separate_documents_and_are_not_tokens(tmp_path):
    path = write(tmp_path, "a.conll", "-DOCSTART- -X- O O\n\nEU B-ORG\n-DOCSTART- -X- O O\nPeter B-PER\n")
    assert read_conll(path, sep=None) == [
        {"tokens": ["EU"], "tags": ["B-ORG"]},
        {"tokens": ["Peter"], "tags": ["B-PER"]},
    ]


def test_conll_wrong_column_count_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.conll", "Harry\tB-person\nPotter\tI-person\n\nrules\tO\textra\n")
    with pytest.raises(DataError) as e:
        read_conll(path)
    assert f"{path}:4" in str(e.value)
    assert "expected 2 columns" in str(e.value) and "found 3" in str(e.value)


def test_conll_tag_column_out_of_range_is_reported(tmp_path):
    path = write(tmp_path, "a.conll", "Harry\tB-person\n")
    with pytest.raises(DataError, match=r"a\.conll:1: tag_col=3 but the line has 2 columns"):
        read_conll(path, tag_col=3)


def test_conll_bad_bio_tag_names_file_line_and_tag(tmp_path):
    path = write(tmp_path, "bad.conll", "Harry\tB-person\nPotter\tPERSON\n")
    with pytest.raises(DataError) as e:
        read_conll(path)
    assert f"{path}:2" in str(e.value)
    assert "'PERSON'" in str(e.value)


def test_conll_i_tag_after_o_breaks_bio(tmp_path):
    path = write(tmp_path, "bad.conll", "the\tO\n\nthe\tO\nPotter\tI-person\n")
    with pytest.raises(DataError) as e:
        read_conll(path)
    assert f"{path}:4" in str(e.value)
    assert "'I-person' follows 'O'" in str(e.value)


def test_conll_i_tag_of_another_type_breaks_bio(tmp_path):
    path = write(tmp_path, "bad.conll", "Harry\tB-person\nLondon\tI-geo-loc\n")
    with pytest.raises(DataError, match=r"bad\.conll:2: tag 'I-geo-loc' follows 'B-person'"):
        read_conll(path)


def test_conll_i_tag_at_sentence_start_breaks_bio(tmp_path):
    path = write(tmp_path, "bad.conll", "Harry\tB-person\n\nPotter\tI-person\n")
    with pytest.raises(DataError, match=r"bad\.conll:3: tag 'I-person' follows 'O'"):
        read_conll(path)


def test_conll_any_tags_when_scheme_is_none(tmp_path):
    path = write(tmp_path, "pos.conll", "the\tDT\ncat\tNN\n")
    assert read_conll(path, scheme=None) == [{"tokens": ["the", "cat"], "tags": ["DT", "NN"]}]


def test_conll_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.conll"
    with pytest.raises(DataError, match=r"nowhere\.conll does not exist"):
        read_conll(path)


def test_conll_empty_file_is_named(tmp_path):
    path = write(tmp_path, "empty.conll", "\n  \n")
    with pytest.raises(DataError, match=r"empty\.conll is empty"):
        read_conll(path)


def test_conll_file_of_docstart_only_has_no_sentences(tmp_path):
    path = write(tmp_path, "doc.conll", "-DOCSTART- -X- O O\n\n")
    with pytest.raises(DataError, match=r"doc\.conll has no sentences"):
        read_conll(path, sep=None)


def test_conll_non_utf8_bytes_name_file_and_line(tmp_path):
    path = write(tmp_path, "latin1.conll", "Harry\tB-person\n\n".encode() + "Zoë\tO\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_conll(path)
    assert f"{path}:3" in str(e.value)
    assert "not UTF-8" in str(e.value)


def test_conll_utf8_bom_is_not_part_of_the_first_token(tmp_path):
    path = write(tmp_path, "bom.conll", "\ufeffHarry\tB-person\n".encode("utf-8"))
    assert read_conll(path)[0]["tokens"] == ["Harry"]


# ----------------------------------------------------------------------------- CSV / JSONL
def test_csv_with_default_columns(tmp_path):
    path = write(tmp_path, "a.csv", 'text,label\n"a fine, witty film",pos\ndull,neg\n')
    assert read_table(path) == [{"text": "a fine, witty film", "label": "pos"},
                                {"text": "dull", "label": "neg"}]


def test_csv_with_custom_text_and_label_columns(tmp_path):
    path = write(tmp_path, "a.csv", "id,review,stars\n1,great,5\n2,awful,1\n")
    assert read_table(path, text_col="review", label_col="stars") == [
        {"text": "great", "label": "5"}, {"text": "awful", "label": "1"}]


def test_csv_missing_column_error_names_the_column_and_the_file(tmp_path):
    path = write(tmp_path, "a.csv", "review,label\ngreat,pos\n")
    with pytest.raises(DataError) as e:
        read_table(path)  # text_col defaults to "text"
    msg = str(e.value)
    assert f"{path}:2" in msg
    assert "no column 'text'" in msg and "review" in msg and "data.text_col" in msg


def test_csv_row_with_wrong_width_names_the_line(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\ngreat,pos\nawful,neg,extra\n")
    with pytest.raises(DataError, match=r"a\.csv:3: expected 2 columns like the header, found 3"):
        read_table(path)


def test_csv_empty_label_names_the_line(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\ngreat,pos\nawful,\n")
    with pytest.raises(DataError, match=r"a\.csv:3: empty label in column 'label'"):
        read_table(path)


def test_csv_header_without_rows(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\n")
    with pytest.raises(DataError, match=r"a\.csv has a header but no rows"):
        read_table(path)


def test_jsonl_with_custom_columns(tmp_path):
    rows = [{"review": "great", "stars": 5}, {"review": "awful", "stars": 1}]
    path = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_table(path, text_col="review", label_col="stars") == [
        {"text": "great", "label": "5"}, {"text": "awful", "label": "1"}]


def test_jsonl_invalid_line_is_named_by_number(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "great", "label": "pos"}\n\n{"text": "awful", "label": \n')
    with pytest.raises(DataError) as e:
        read_table(path)
    assert f"{path}:3" in str(e.value)
    assert "not valid JSON" in str(e.value)


def test_jsonl_missing_column_names_the_column(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "great", "label": "pos"}\n{"text": "awful"}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: no column 'label'"):
        read_table(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "great", "label": "pos"}\n["awful", "neg"]\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: expected a JSON object per line"):
        read_table(path)


def test_table_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"gone\.csv does not exist"):
        read_table(tmp_path / "gone.csv")
    with pytest.raises(DataError, match=r"empty\.jsonl is empty"):
        read_table(write(tmp_path, "empty.jsonl", ""))


def test_table_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path, "a.csv", b"text,label\ngreat,pos\ncaf\xe9,neg\n")
    with pytest.raises(DataError, match=r"a\.csv:3: bytes that are not UTF-8"):
        read_table(path)


def test_a_column_name_holding_a_line_break_still_gives_a_one_line_error(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text('"sen\ntence",label\nhello,pos\n')
    with pytest.raises(DataError) as e:
        read_table(path)
    assert "\n" not in str(e.value)
    assert str(e.value) == (f"{path}:3: no column 'text' (columns: sen\\ntence, label); "
                            "set data.text_col / data.label_col")
