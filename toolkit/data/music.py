"""The Bach chorales as melody-token sequences, and melody tokens to and from MIDI.

Source: the Bach chorales in music21's corpus (``music21.corpus.chorales.Iterator()``,
MusicXML/Humdrum scores shipped inside the ``music21`` package; music21 is BSD-3,
the chorale encodings are its public-domain Bach collection). 371 entries in
Riemenschneider order, 21 of which repeat an earlier file (350 distinct scores).

A melody is one voice (see :func:`melody_part`), transposed so its analysed key is
C major or A minor, written as one token per note or rest: ``"<pitch>_<duration>"``
such as ``"C5_1"``, ``"F#4_0.5"`` or ``"rest_2"``. Pitches are spelt with sharps
only (``A#4``, never ``B-4``), durations are quarter lengths written by
:func:`format_duration`. Tokens that start with ``"<"`` (``"<major>"``, ``"<eos>"``)
belong to the model and are ignored when melody tokens become music.

Parsing the corpus takes about 35 s, so :func:`load_chorales` keeps its result as
JSON under the toolkit cache (``$RTK_CACHE``, see :func:`toolkit.data.fetch.cache_dir`);
the file name carries music21's version and :data:`TOKENS_VERSION`, so a new
music21 or a change to the tokenisation builds a fresh file.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import re
from fractions import Fraction
from pathlib import Path

from toolkit.data.fetch import cache_dir
from toolkit.errors import DataError
from toolkit.files import write_atomic

log = logging.getLogger(__name__)

# Bump when the tokens load_chorales produces change: it names the cache file.
TOKENS_VERSION = 1
MIN_TOKENS = 8
TEMPO_BPM = 80  # quarter notes per minute in written MIDI files
INSTALL = "pip install music21"
_MISSING = f"the music task needs music21, which is not installed; install it with: {INSTALL}"
SOURCE = "music21.corpus.chorales.Iterator() (Bach chorales in music21's corpus; music21 BSD-3)"

_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_PITCH = re.compile(r"[A-G](?:#{1,2}|-{1,2})?\d")
_DECIMAL = re.compile(r"\d+(?:\.\d+)?")
_RATIO = re.compile(r"(\d+)/(\d+)")
# Quantisation grid when reading MIDI back: 1/8 and 1/6 of a quarter (the corpus
# has 32nd notes, 0.125; triplet eighths are 1/3 = 2/6).
_MIDI_DIVISORS = (8, 6)


# ---------------------------------------------------------------- durations

def format_duration(ql) -> str:
    """A quarter length written canonically: ``1``, ``0.5``, ``1.5``, ``0.25``, ``1/3``.

    Whole numbers have no decimal point; lengths whose denominator is a power of two
    are written as exact decimals; anything else (triplets, quintuplets) as a reduced
    fraction ``a/b``. Floats are read as the nearest fraction with denominator <= 64,
    the way music21 stores ``0.333…`` as ``1/3``. :func:`parse_duration` inverts it.
    """
    try:
        value = ql if isinstance(ql, Fraction) else Fraction(ql).limit_denominator(64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"the duration {ql!r} is not a finite number of quarter notes") from None
    if value <= 0:
        raise DataError(f"the duration {ql!r} is not positive")
    den = value.denominator
    if den == 1:
        return str(value.numerator)
    if den & (den - 1) == 0:  # power of two: the decimal expansion is exact
        digits = den.bit_length() - 1
        text = f"{value.numerator / den:.{digits}f}"
        return text.rstrip("0").rstrip(".")
    return f"{value.numerator}/{den}"


def parse_duration(text: str) -> Fraction:
    """The quarter length a :func:`format_duration` string stands for, as an exact Fraction."""
    if _RATIO.fullmatch(text):
        num, den = (int(g) for g in _RATIO.fullmatch(text).groups())
        if not den:
            raise DataError(f"the duration '{text}' divides by zero")
        value = Fraction(num, den)
    elif _DECIMAL.fullmatch(text):
        value = Fraction(text)
    else:
        raise DataError(f"the duration '{text}' is not a quarter length such as 1, 0.5 or 1/3")
    if value <= 0:
        raise DataError(f"the duration '{text}' is not positive")
    return value


def _pitch_name(midi: int) -> str:
    """Sharps-only name with octave, as music21 writes it: 60 -> ``C4``, 70 -> ``A#4``."""
    return f"{_SHARP_NAMES[midi % 12]}{midi // 12 - 1}"


def parse_token(token: str) -> tuple[str, Fraction]:
    """``"F#4_0.5"`` -> ``("F#4", Fraction(1, 2))``; ``"rest_2"`` -> ``("rest", 2)``."""
    pitch, sep, dur = token.rpartition("_")
    if not sep or not (pitch == "rest" or _PITCH.fullmatch(pitch)):
        raise DataError(
            f"the melody token '{token}' is not <pitch>_<duration> or rest_<duration> "
            "(e.g. 'C5_1', 'F#4_0.5', 'rest_2')"
        )
    try:
        return pitch, parse_duration(dur)
    except DataError:
        raise DataError(
            f"the melody token '{token}' has a bad duration '{dur}' "
            "(a positive quarter length such as 1, 0.5 or 1/3)"
        ) from None


# ---------------------------------------------------------------- music21

def _music21_version() -> str:
    try:
        return importlib.metadata.version("music21")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(_MISSING) from None


def _music21():
    # music21 is imported where it is used (here and below, after this check): it is heavy, and only
    # the music task needs it
    try:
        import music21
    except ImportError:
        raise DataError(_MISSING) from None
    return music21


def _sounding_midi(element) -> int | None:
    """MIDI number of a note, or of a chord's top note; None for rests."""
    if element.isRest:
        return None
    if element.isChord:
        return max(p.midi for p in element.pitches)
    return element.pitch.midi


def melody_part(score):
    """The part named Soprano (part name or id, any case), else the highest-sounding part.

    An exact "soprano" wins over a name that only contains it ("Soprano 1",
    "Soprano Oboe 1 Violin1"); the first such part is taken. Without one, the part
    with the highest mean pitch is the melody (the Humdrum-encoded chorales name
    their parts ``spine_N``). ``None`` when no part has a note.
    """
    parts = list(score.parts)

    def labels(part) -> list[str]:
        return [str(x).strip().lower() for x in (part.partName, part.id) if x is not None]

    for exact in (True, False):
        for part in parts:
            if any((lab == "soprano") if exact else ("soprano" in lab) for lab in labels(part)):
                return part
    best, best_mean = None, None
    for part in parts:
        pitches = [m for m in (_sounding_midi(n) for n in part.recurse().notes) if m is not None]
        if pitches:
            mean = sum(pitches) / len(pitches)
            if best_mean is None or mean > best_mean:
                best, best_mean = part, mean
    return best


def key_shift(score) -> tuple[int, str]:
    """Semitones that move the score's analysed key to C major / A minor, and the mode.

    The key is music21's ``score.analyze('key')`` (Krumhansl-Schmuckler profiles over
    every part), not the key signature: many chorales are notated with modal
    signatures (a minor key with one flat too few), and MusicXML key signatures rarely
    carry a mode. Over the 371 corpus entries the analysis of the whole score, of the
    sounding-pitch score and of the four voices alone agree on every one. The shift is
    the smaller way round, -5..+6 semitones, so the range stays near the original.
    """
    key = score.analyze("key")
    mode = "minor" if key.mode == "minor" else "major"
    target = 9 if mode == "minor" else 0  # A minor / C major
    shift = (target - key.tonic.pitchClass) % 12
    if shift > 6:
        shift -= 12
    return shift, mode


def melody_tokens(part, shift: int = 0) -> list[str]:
    """One token per note or rest of ``part``, transposed by ``shift`` semitones.

    Chords become their top note; a part written in several voices is chordified
    first (music21 ties the pieces of a note another voice's onset cuts), so the top
    line is read; tied notes merge into one token with the summed length; grace
    notes (length 0) are skipped; consecutive rests merge.
    """
    if part.recurse().getElementsByClass("Voice"):
        part = copy.deepcopy(part)  # chordify would fold grace notes into the next chord
        part.remove([n for n in part.recurse().notes if n.duration.isGrace], recurse=True)
        part = part.chordify()
    events: list[list] = []  # [midi or None, Fraction length, tie continues]
    for element in part.flatten().notesAndRests:
        length = Fraction(element.quarterLength).limit_denominator(64)
        if length <= 0 or element.duration.isGrace:
            continue
        midi = _sounding_midi(element)
        midi = None if midi is None else midi + shift
        tie = element.tie.type if element.tie is not None else None
        if events and events[-1][0] is not None and events[-1][2] and midi == events[-1][0] \
                and tie in ("stop", "continue"):
            events[-1][1] += length
            events[-1][2] = tie == "continue"
            continue
        if events and midi is None and events[-1][0] is None:
            events[-1][1] += length
            continue
        events.append([midi, length, _tie_continues(element)])
    return [f"{'rest' if m is None else _pitch_name(m)}_{format_duration(d)}" for m, d, _ in events]


def _tie_continues(element) -> bool:
    return element.tie is not None and element.tie.type in ("start", "continue")


# ---------------------------------------------------------------- the corpus

def cache_path() -> Path:
    """Where :func:`load_chorales` keeps its JSON (music21 version and TOKENS_VERSION in the name)."""
    return cache_dir() / "music" / f"bach-chorales-m21-{_music21_version()}-v{TOKENS_VERSION}.json"


def _parse_corpus() -> tuple[list[dict], list[dict]]:
    """Parse every chorale in music21's corpus: (chorales, dropped) — the slow part."""
    m21 = _music21()
    from music21 import corpus  # music21: see _music21

    names = [str(n) for n in corpus.chorales.Iterator(returnType="filename")]
    chorales: list[dict] = []
    dropped: list[dict] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:  # Riemenschneider's numbering lists some chorales twice
            dropped.append({"id": name, "reason": "repeats an earlier entry of the iterator"})
            continue
        seen.add(name)
        try:
            score = corpus.parse(name)
        except Exception as exc:  # noqa: BLE001 - one unreadable score must not sink the corpus
            dropped.append({"id": name, "reason": f"music21 could not parse it ({exc})"})
            continue
        part = melody_part(score)
        if part is None:
            dropped.append({"id": name, "reason": "no part with notes to take the melody from"})
            continue
        shift, mode = key_shift(score)
        tokens = melody_tokens(part, shift)
        if len(tokens) < MIN_TOKENS:
            dropped.append({"id": name, "reason": f"only {len(tokens)} melody tokens"})
            continue
        chorales.append({"id": name, "mode": mode, "tokens": tokens})
    log.debug("parsed %d chorales with music21 %s", len(chorales), m21.__version__)
    return chorales, dropped


def load_chorales() -> list[dict]:
    """The Bach chorale melodies: ``[{"id", "mode", "tokens"}]`` in the corpus iterator's order.

    ``id`` is the corpus name (``"bach/bwv269"``), ``mode`` ``"major"`` or ``"minor"``
    (the analysed key, see :func:`key_shift`), ``tokens`` the melody in C major / A
    minor (see :func:`melody_tokens`). Entries that repeat an earlier one, have no
    melody or fewer than 8 tokens are dropped and counted in the log. The first call
    parses the corpus and writes :func:`cache_path`; later calls only read that JSON.
    """
    path = cache_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            chorales = data["chorales"]
            log.info("read %d Bach chorales from %s (%d dropped when it was built)",
                     len(chorales), path, len(data.get("dropped", [])))
            return chorales
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("the chorale cache %s cannot be read (%s); parsing the corpus again", path, exc)
    chorales, dropped = _parse_corpus()
    reasons = sorted({d["reason"].split(" (")[0] for d in dropped})
    log.info("parsed %d Bach chorales from music21's corpus; dropped %d (%s)",
             len(chorales), len(dropped), "; ".join(reasons) or "none")
    payload = {
        "source": SOURCE,
        "music21": _music21_version(),
        "tokens_version": TOKENS_VERSION,
        "chorales": chorales,
        "dropped": dropped,
    }
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload), encoding="utf-8"))
    return chorales


# ---------------------------------------------------------------- tokens <-> music

def tokens_to_stream(tokens: list[str]):
    """A music21 Stream of Notes and Rests for melody tokens; ``<...>`` tokens are skipped."""
    _music21()
    from music21 import note, stream  # music21: see _music21

    out = stream.Stream()
    for token in tokens:
        if token.startswith("<"):
            continue
        pitch, length = parse_token(token)
        element = note.Rest() if pitch == "rest" else note.Note(pitch)
        element.duration.quarterLength = length
        out.append(element)
    return out


def write_midi(tokens: list[str], path) -> Path:
    """Write melody tokens as a one-track MIDI file at 80 quarter notes a minute; returns the path."""
    _music21()
    from music21 import tempo  # music21: see _music21

    path = Path(path)
    melody = tokens_to_stream(tokens)
    if not melody.notesAndRests:
        raise DataError(f"there are no notes or rests among the tokens to write to {path}")
    melody.insert(0, tempo.MetronomeMark(number=TEMPO_BPM, referent=1.0))

    def write(tmp: Path) -> None:
        try:
            melody.write("midi", fp=str(tmp))
        except Exception as exc:  # noqa: BLE001 - music21 raises many types here
            raise DataError(f"music21 could not write the MIDI file {path} ({exc})") from None

    write_atomic(path, write)
    return path


def read_midi_notes(path) -> list[tuple[str, float]]:
    """``(pitch or "rest", quarter length)`` for each note/rest of a MIDI file's melody.

    The melody is the first part that has notes; chords become their top note, tied
    notes merge, pitches are spelt with sharps as in the tokens. Durations are
    quantised to 1/8 and 1/6 of a quarter. MIDI has no rest events, only gaps between
    notes: a rest at the start or between notes comes back (consecutive rests as one),
    but nothing marks time after the last note, so trailing rests are not returned
    (music21 pads the last bar with one on reading; it is dropped).
    """
    _music21()
    from music21 import midi as m21midi  # music21: see _music21

    path = Path(path)
    if not path.is_file():
        raise DataError(f"the MIDI file {path} does not exist")
    try:
        score = m21midi.translate.midiFilePathToStream(path, quarterLengthDivisors=_MIDI_DIVISORS)
    except Exception as exc:  # noqa: BLE001 - a broken file raises many types in music21
        raise DataError(f"music21 cannot read {path} as a MIDI file ({exc})") from None
    parts = [p for p in score.parts if p.recurse().notes] or list(score.parts)
    if not parts:
        return []
    out = [(pitch, float(length)) for pitch, length in map(parse_token, melody_tokens(parts[0]))]
    while out and out[-1][0] == "rest":  # music21 pads the last bar with a rest: not in the file
        out.pop()
    return out
