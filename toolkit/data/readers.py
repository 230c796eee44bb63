"""Readers for the user's files and the named sources' raw files.

Each reader returns examples in the file's own order (the standard split depends
on it) and turns anything it cannot read into a DataError that names the file
and, where there is one, the line.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from toolkit.errors import DataError

_BIO = re.compile(r"O|[BI]-\S+")
_NEWLINE = re.compile(r"\r\n|\r|\n")


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"data file {path} is not a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 (at byte {e.start})") from None
    if not text.strip():
        raise DataError(f"data file {path} is empty")
    return text


def lines(text: str) -> list[str]:
    """Lines as an editor numbers them: broken at \\n, \\r\\n or \\r only.

    ``str.splitlines`` also breaks at U+2028, U+0085, form feeds and other
    separators, which may sit inside a token or a JSON string, and then the line
    numbers in errors would not match the file.
    """
    return _NEWLINE.split(text)


def read_conll(
    path: str | Path,
    token_col: int = 0,
    tag_col: int = -1,
    sep: str | None = "\t",
    scheme: str | None = "bio",
) -> list[dict]:
    """CoNLL-style columns: one token a line, a blank line between sentences.

    ``sep=None`` splits on any run of white space. ``scheme="bio"`` checks every
    tag is ``O``, ``B-type`` or ``I-type`` and that ``I-type`` continues the same type.
    """
    path = Path(path)
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    ncols = None
    for lineno, line in enumerate(lines(read_text(path)), start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        cols = line.split(sep) if sep is not None else line.split()
        if ncols is None:
            ncols = len(cols)
            for name, col in (("token_col", token_col), ("tag_col", tag_col)):
                if not -ncols <= col < ncols:
                    raise DataError(
                        f"{path}:{lineno}: {name}={col} but the line has {ncols} columns"
                    )
        if len(cols) != ncols:
            raise DataError(
                f"{path}:{lineno}: expected {ncols} columns like the first line, found {len(cols)}"
            )
        token, tag = cols[token_col].strip(), cols[tag_col].strip()
        if not token or not tag:
            raise DataError(f"{path}:{lineno}: empty token or tag")
        if scheme == "bio":
            if not _BIO.fullmatch(tag):
                raise DataError(f"{path}:{lineno}: tag '{tag}' is not O, B-<type> or I-<type>")
            if tag.startswith("I-"):
                prev = tags[-1] if tags else "O"
                if prev == "O" or prev[2:] != tag[2:]:
                    raise DataError(
                        f"{path}:{lineno}: tag '{tag}' follows '{prev}', which breaks BIO "
                        f"(an I- tag must continue a B- or I- of the same type)"
                    )
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise DataError(f"data file {path} has no sentences")
    return sentences


def read_lines(path: str | Path) -> list[dict]:
    """Plain text, one example per non-empty line (language models); returns {"text"}."""
    out = [{"text": line} for line in lines(read_text(path)) if line.strip()]
    if not out:
        raise DataError(f"data file {path} has no non-empty lines")
    return out


def read_table(path: str | Path, text_col: str = "text", label_col: str = "label") -> list[dict]:
    """CSV (with a header row) or JSON lines, by the file's suffix; returns {"text", "label"}."""
    path = Path(path)
    out = []
    for lineno, row in _table_rows(path):
        _require(path, lineno, row, (text_col, label_col), "data.text_col / data.label_col")
        value, label = row[text_col], row[label_col]
        if value is None or not str(value).strip():
            raise DataError(f"{path}:{lineno}: empty text in column '{text_col}'")
        if label is None or str(label).strip() == "":
            raise DataError(f"{path}:{lineno}: empty label in column '{label_col}'")
        out.append({"text": str(value), "label": str(label).strip()})
    if not out:
        raise DataError(f"data file {path} has a header but no rows")
    return out


def read_pairs(path: str | Path, source_col: str = "source", target_col: str = "target") -> list[dict]:
    """CSV (with a header row) or JSON lines, by the file's suffix: a source string and its
    target sequence (space-separated, or a JSON list of strings); returns {"word", "prons"}.

    Rows with the same source become one example whose targets are all references,
    in file order (first sight of the source), so a source never sits in two splits.
    """
    path = Path(path)
    grouped: dict[str, list[list[str]]] = {}
    for lineno, row in _table_rows(path):
        _require(path, lineno, row, (source_col, target_col), "data.source_col / data.target_col")
        source, target = row[source_col], row[target_col]
        if source is None or not str(source).strip():
            raise DataError(f"{path}:{lineno}: empty source in column '{source_col}'")
        if isinstance(target, list) and all(isinstance(t, str) for t in target):
            tokens = " ".join(target).split()
        elif target is None or isinstance(target, (dict, list)):
            raise DataError(f"{path}:{lineno}: the target in column '{target_col}' must be tokens separated "
                            "by spaces (or, in JSON, a list of strings)")
        else:
            tokens = str(target).split()
        if not tokens:
            raise DataError(f"{path}:{lineno}: empty target in column '{target_col}'")
        grouped.setdefault(str(source).strip(), []).append(tokens)
    if not grouped:
        raise DataError(f"data file {path} has a header but no rows")
    return [{"word": w, "prons": prons} for w, prons in grouped.items()]


def _table_rows(path: Path):
    """(line number, row dict) of a CSV file with a header row, or of JSON lines, by the file's suffix."""
    text = read_text(path)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return _jsonl_rows(path, text)
    return _csv_rows(path, text)


def one_line(text) -> str:
    """A value read from a file, for an error sentence: a quoted CSV field may hold a line break."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def column_names(columns) -> str:
    """A header's column names for an error sentence, on one line."""
    return ", ".join(one_line(c) for c in columns)


def _require(path: Path, lineno: int, row: dict, columns: tuple[str, ...], keys: str) -> None:
    for col in columns:
        if col not in row:
            raise DataError(f"{path}:{lineno}: no column '{col}' (columns: {column_names(row)}); set {keys}")


def _csv_rows(path: Path, text: str):
    # the csv module reads the line breaks itself: a quoted field may hold one
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        width = len(header)
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) != width:
                raise DataError(
                    f"{path}:{lineno}: expected {width} columns like the header, found {len(row)}"
                )
            yield lineno, dict(zip(header, row))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def _jsonl_rows(path: Path, text: str):
    for lineno, line in enumerate(lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, arrays nested 10,000 deep
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
            raise DataError(f"{path}:{lineno}: JSON this reader cannot take ({reason})") from None
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{path}:{lineno}: a \\u escape that is not a Unicode character "
                            "(a lone surrogate)") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line")
        yield lineno, row
