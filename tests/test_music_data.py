"""The Bach chorale melodies (toolkit.data.music): tokens, the JSON cache and MIDI round trips.

The corpus is parsed once per test session into a private RTK_CACHE (about 20 s here
with music21's own score pickles warm, about 45 s on a fresh machine); every other
test reads that result or its cache file.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from fractions import Fraction

import pytest

from toolkit.data import music
from toolkit.errors import DataError

TOKEN = re.compile(r"(?:[A-G]#?\d|rest)_(?:\d+(?:\.\d+)?|\d+/\d+)")


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    """(chorales, cache file) from one cold parse into a private RTK_CACHE."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RTK_CACHE", str(tmp_path_factory.mktemp("rtk-cache")))
        path = music.cache_path()
        assert not path.exists()
        chorales = music.load_chorales()
        yield chorales, path


@pytest.fixture
def chorales(corpus_cache):
    return corpus_cache[0]


@pytest.mark.parametrize("ql, text", [
    (1, "1"), (4.0, "4"), (0.5, "0.5"), (1.5, "1.5"), (0.25, "0.25"), (0.75, "0.75"),
    (0.125, "0.125"), (Fraction(1, 3), "1/3"), (1 / 3, "1/3"), (Fraction(2, 3), "2/3"),
    (Fraction(4, 3), "4/3"), (Fraction(1, 6), "1/6"), (10.5, "10.5"),
])
def test_durations_format_canonically_and_parse_back_exactly(ql, text):
    assert music.format_duration(ql) == text
    assert music.parse_duration(text) == Fraction(ql).limit_denominator(64)
    assert music.format_duration(music.parse_duration(text)) == text


@pytest.mark.parametrize("bad", ["", "0", "-1", "1/0", "abc", "1.5.2", "nan"])
def test_a_bad_duration_is_a_data_error(bad):
    with pytest.raises(DataError, match="duration"):
        music.parse_duration(bad)


def test_load_chorales_gives_well_formed_melodies_in_both_modes(chorales):
    assert len(chorales) >= 300
    ids = [c["id"] for c in chorales]
    assert len(ids) == len(set(ids)), "the iterator's repeated entries are kept once"
    assert all(i.startswith("bach/") for i in ids)
    assert {c["mode"] for c in chorales} == {"major", "minor"}
    for c in chorales:
        assert len(c["tokens"]) >= music.MIN_TOKENS, c["id"]
        bad = [t for t in c["tokens"] if not TOKEN.fullmatch(t)]
        assert not bad, f"{c['id']}: {bad[:5]}"
        assert not any("-" in t for t in c["tokens"]), "pitches are spelt with sharps only"


def test_transposition_to_c_major_and_a_minor_keeps_the_vocabulary_small(chorales):
    vocab = {t for c in chorales for t in c["tokens"]}
    pitch_classes = {re.sub(r"\d.*", "", t.split("_")[0]) for t in vocab} - {"rest"}
    assert len(vocab) < 250
    # C major / A minor: the white notes plus the leading tones and chromatic passing notes.
    assert {"C", "D", "E", "F", "G", "A", "B"} <= pitch_classes
    # Most chorales end on their tonic after transposition (the rest end on a half
    # or Phrygian cadence).
    final_on_tonic = sum(
        next(t for t in reversed(c["tokens"]) if not t.startswith("rest"))[:1]
        == ("C" if c["mode"] == "major" else "A")
        for c in chorales
    )
    assert final_on_tonic / len(chorales) > 0.75


def test_soprano_is_the_melody_even_when_parts0_is_an_instrument(chorales):
    # bach/bwv172.6 in music21's corpus: parts are Violin, Soprano, Alto, Tenor, Bass,
    # and the violin descant sounds higher (mean MIDI 75.6) than the soprano (70.3).
    # F major; the soprano opens F4 C5 B-4 A4 G4 F4 (the violin F5 G5 A5 A5 G5 F5),
    # which moved down 5 semitones to C major is:
    (bwv172_6,) = [c for c in chorales if c["id"] == "bach/bwv172.6"]
    assert bwv172_6["mode"] == "major"
    assert bwv172_6["tokens"][:6] == ["C4_1", "G4_0.5", "F4_0.5", "E4_0.5", "D4_0.5", "C4_1"]


def test_chords_and_voices_reduce_to_the_top_line_with_ties_merged():
    # No soprano in the corpus has voices or chords (checked over all 350), but the
    # highest-part fallback and future sources may: the top line must still come out.
    from music21 import chord, meter, note, stream, tie

    part = stream.Part()
    bar1 = stream.Measure(number=1)
    bar1.append(meter.TimeSignature("4/4"))
    bar1.insert(0, stream.Voice([note.Note("E5", quarterLength=2), note.Note("D5", quarterLength=2)]))
    bar1.insert(0, stream.Voice([note.Note("C4", quarterLength=1), note.Note("B3", quarterLength=1),
                                 chord.Chord(["G4", "B4"], quarterLength=2)]))
    bar2 = stream.Measure(number=2)
    tied = note.Note("B-4", quarterLength=2)
    tied.tie = tie.Tie("start")
    bar2.append([note.Rest(quarterLength=1), note.Rest(quarterLength=1), tied])
    bar3 = stream.Measure(number=3)
    end = note.Note("B-4", quarterLength=1)
    end.tie = tie.Tie("stop")
    bar3.append([end, note.Note("B-4", quarterLength=0).getGrace(), chord.Chord(["C4", "A4"], quarterLength=3)])
    part.append([bar1, bar2, bar3])
    assert music.melody_tokens(part) == ["E5_2", "D5_2", "rest_2", "A#4_3", "A4_3"]
    assert music.melody_tokens(part, -2) == ["D5_2", "C5_2", "rest_2", "G#4_3", "G4_3"]


def test_second_load_reads_the_json_cache_without_parsing(corpus_cache, monkeypatch):
    chorales, path = corpus_cache
    monkeypatch.setenv("RTK_CACHE", str(path.parents[1]))
    assert path.is_file()
    assert re.fullmatch(r"bach-chorales-m21-[\w.]+-v\d+\.json", path.name)
    assert importlib.metadata.version("music21") in path.name
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["chorales"] == chorales
    assert data["tokens_version"] == music.TOKENS_VERSION
    assert not list(path.parent.glob("*.partial*")), "no temp file is left beside the cache"

    def must_not_parse():
        raise AssertionError("load_chorales parsed the corpus although its cache exists")

    monkeypatch.setattr(music, "_parse_corpus", must_not_parse)
    assert music.load_chorales() == chorales


def test_an_unreadable_cache_is_rebuilt_not_trusted(chorales, tmp_path, monkeypatch):
    monkeypatch.setenv("RTK_CACHE", str(tmp_path))
    path = music.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text('{"chorales": [', encoding="utf-8")  # what a killed writer would leave
    monkeypatch.setattr(music, "_parse_corpus", lambda: (chorales, []))  # the real parse, done once
    assert music.load_chorales() == chorales
    assert json.loads(path.read_text(encoding="utf-8"))["chorales"] == chorales


def test_midi_round_trip_keeps_pitches_and_durations_of_a_real_chorale(chorales, tmp_path):
    # bach/bwv8.6 opens with a rest (an upbeat) and has rests between phrases, so its
    # first 30 tokens exercise rests at the start and in the middle. Caveat: MIDI stores
    # no rest after the last note, so a slice must end on a note to come back whole
    # (read_midi_notes drops the rest music21 pads the last bar with); this one does.
    (bwv8_6,) = [c for c in chorales if c["id"] == "bach/bwv8.6"]
    tokens = bwv8_6["tokens"][:30]
    assert tokens[0].startswith("rest_") and not tokens[-1].startswith("rest_")
    assert sum(t.startswith("rest_") for t in tokens) >= 2
    path = music.write_midi(["<minor>", *tokens, "<eos>"], tmp_path / "out" / "bwv8_6.mid")
    assert path == tmp_path / "out" / "bwv8_6.mid" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["bwv8_6.mid"], "no temp file is left"
    expected = [(p, float(d)) for p, d in map(music.parse_token, tokens)]
    assert music.read_midi_notes(path) == expected


def test_tokens_to_stream_skips_special_tokens_and_keeps_durations():
    stream = music.tokens_to_stream(["<major>", "C5_1", "F#4_1/3", "rest_2", "A#4_1.5", "<eos>"])
    got = [("rest" if n.isRest else n.pitch.nameWithOctave, n.quarterLength) for n in stream.notesAndRests]
    assert got == [("C5", 1.0), ("F#4", Fraction(1, 3)), ("rest", 2.0), ("A#4", 1.5)]


@pytest.mark.parametrize("bad", ["C5", "H4_1", "C5_x", "C5_0", "rest_-1", "C_1", "C5_1_2"])
def test_a_malformed_token_is_a_data_error_naming_it(bad):
    with pytest.raises(DataError, match=re.escape(f"'{bad}'")):
        music.tokens_to_stream(["<major>", "C5_1", bad])


def test_writing_no_notes_is_a_data_error_and_leaves_no_file(tmp_path):
    target = tmp_path / "empty.mid"
    with pytest.raises(DataError, match="no notes or rests"):
        music.write_midi(["<major>", "<eos>"], target)
    assert list(tmp_path.iterdir()) == []


def test_reading_a_missing_midi_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="nope.mid"):
        music.read_midi_notes(tmp_path / "nope.mid")


def test_missing_music21_names_the_pip_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(DataError, match="pip install music21"):
        music.load_chorales()
