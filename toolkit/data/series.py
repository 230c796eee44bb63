"""Real-valued sequences: readers for ``.ts`` / ``.npz`` / long CSV files, the UEA/UCR named
sources and the data module of the ``series`` head.

A sequence is a float array of shape (T, F): T time steps (any length from 1 on), F
features (channels), the same F for every sequence of a task. The readers return
``{"x": (T, F) float32 array, "y": label or target or None}`` per sequence, in the
file's own order, and turn anything they cannot read into a DataError that names the
file and the line (or the sequence). A missing value (``?`` in ``.ts``, an empty cell or
``nan`` elsewhere) is an error unless ``data.missing=interpolate``; an infinite value
is always one. Steps where every channel is missing *after* the last real value are
padding, not data: they end the sequence (the UEA archive pads unequal lengths so).

Unlike the token modules this one does not go through Hugging Face ``datasets``: the
arrays are read straight into NumPy (the largest archive file here is 0.65 MB and parses
in well under a second), and an Arrow copy in the cache would buy nothing.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from toolkit.data.fetch import pip_members
from toolkit.data.base import BucketBatchSampler, BucketedLoaders
from toolkit.data.readers import column_names, lines, one_line, read_text
from toolkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TARGETS = ("class", "regression")
MISSING = ("error", "interpolate")
SUFFIXES = (".ts", ".npz", ".csv")

# ----------------------------------------------------------------------------- named sources
# UEA / UCR archive files as shipped in the aeon wheel (BSD-3 code; the data: see docs/data.md).
AEON = "aeon==1.6.0"
UEA_SOURCES = {"japanese_vowels": "JapaneseVowels", "basic_motions": "BasicMotions", "gunpoint": "GunPoint"}


def uea_path(name: str, split: str) -> Path:
    """The archive's official ``<Name>_TRAIN.ts`` / ``_TEST.ts``, fetched once from the aeon wheel
    (with the other named sources' files: one download for all six)."""
    part = {"train": "TRAIN", "test": "TEST"}[split]
    members = {f"aeon/datasets/data/{n}/{n}_{p}.ts": f"aeon-1.6.0-{n}_{p}.ts"
               for n in sorted({name, *UEA_SOURCES.values()}) for p in ("TRAIN", "TEST")}
    return pip_members(AEON, members, sdist=False)[f"aeon/datasets/data/{name}/{name}_{part}.ts"]


# ----------------------------------------------------------------------------- readers
def _missing_policy(missing: str) -> str:
    if missing not in MISSING:
        raise ConfigError(f"data.missing={missing!r} is not one of: {', '.join(MISSING)}")
    return missing


def finish(x: np.ndarray, where: str, missing: str) -> np.ndarray:
    """(T, F) floats with NaN for missing values -> (T', F) float32 with none: trailing all-missing
    steps dropped (padding), gaps filled linearly when ``missing == "interpolate"``, else an error."""
    if np.isinf(x).any():
        t, f = np.argwhere(np.isinf(x))[0]
        raise DataError(f"{where}: an infinite value at step {t} of channel {f}")
    present = ~np.isnan(x)
    steps = np.flatnonzero(present.any(1))
    if not len(steps):
        raise DataError(f"{where}: an empty sequence (no values)")
    x, present = x[: steps[-1] + 1], present[: steps[-1] + 1]
    if not present.all():
        if missing != "interpolate":
            t, f = np.argwhere(~present)[0]
            raise DataError(f"{where}: a missing value at step {t} of channel {f}; set data.missing=interpolate "
                            "to fill gaps linearly from their neighbours")
        x = x.copy()
        for f in range(x.shape[1]):
            known = np.flatnonzero(present[:, f])
            if not len(known):
                raise DataError(f"{where}: channel {f} has no values, so there is nothing to interpolate from")
            x[:, f] = np.interp(np.arange(len(x)), known, x[known, f])  # ends: the nearest value
    return x.astype(np.float32)


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:120]


def _flag(header: dict[str, list[str]], key: str) -> bool:
    """Whether a .ts header line such as ``@classLabel true 1 2 3`` is on."""
    return bool(header.get(key)) and header[key][0].lower() == "true"


def _number(text: str, where: str) -> float:
    text = text.strip()
    if text in ("?", "") or text.lower() == "nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {text[:40]!r} is not a number") from None


def read_ts(path: str | Path, missing: str = "error") -> list[dict]:
    """A UEA / UCR ``.ts`` file: ``@`` header lines, then ``@data`` and one sequence a line,
    channels separated by ``:``, values by ``,``, the class label (``@classLabel true …``) or
    regression target (``@targetLabel true``) last; ``?`` is a missing value."""
    path, missing = Path(path), _missing_policy(missing)
    header: dict[str, list[str]] = {}
    out: list[dict] = []
    in_data = False
    for lineno, line in enumerate(lines(read_text(path)), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{where}: expected a @ header line (or @data) before the data")
            key, *rest = line.split()
            key = key[1:].lower()
            if key == "data":
                in_data = True
                if _flag(header, "timestamps"):
                    raise DataError(f"{where}: time-stamped .ts files (@timeStamps true) are not supported")
            else:
                header[key] = rest
            continue
        out.append(_ts_row(line, where, header, missing))
    if not in_data:
        raise DataError(f"{path} has no @data line, so it is not a .ts file")
    if not out:
        raise DataError(f"data file {path} has no sequences after @data")
    return out


def _ts_row(line: str, where: str, header: dict[str, list[str]], missing: str) -> dict:
    labels = header.get("classlabel", [])
    has_label, has_target = _flag(header, "classlabel"), _flag(header, "targetlabel")
    fields = line.split(":")
    y = None
    if has_label or has_target:
        if len(fields) < 2:
            raise DataError(f"{where}: expected channels separated by ':' and then the "
                            f"{'label' if has_label else 'target'}")
        y = fields.pop().strip()
        if has_label and len(labels) > 1 and y not in labels[1:]:
            raise DataError(f"{where}: class label {y!r} is not one of the @classLabel labels "
                            f"({', '.join(labels[1:])})")
        if has_target:
            y = _number(y, where)
            if not math.isfinite(y):
                raise DataError(f"{where}: the target must be a finite number")
    dims = header.get("dimensions")
    if dims and dims[0].isdigit() and len(fields) != int(dims[0]):
        raise DataError(f"{where}: {len(fields)} channels, but @dimensions says {dims[0]}")
    channels = [[_number(v, where) for v in field.split(",")] for field in fields]
    width = max(len(c) for c in channels)
    x = np.full((width, len(channels)), np.nan)
    for f, values in enumerate(channels):
        x[: len(values), f] = values  # a shorter channel ends in missing values
    return {"x": finish(x, where, missing), "y": y}


def read_npz(path: str | Path, missing: str = "error") -> list[dict]:
    """NumPy ``.npz``: ``x`` of shape (N, T, F) or (N, T) with optional ``lengths`` (N,), or the
    sequences as arrays ``x_0``, ``x_1``, … of shape (T_i, F); optional ``y`` (N,) labels or targets."""
    path, missing = Path(path), _missing_policy(missing)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"data file {path} is not a file")
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip archive of .npy files
            raise DataError(f"{path} is not a NumPy .npz file (not a zip archive); write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds an object array, which NumPy reads only by unpickling (running code); "
                            "save the sequences padded with 'lengths', or as arrays x_0, x_1, …") from None
        raise DataError(f"{path} is not a NumPy .npz file this reader can read ({_first_line(e)})") from None
    except Exception as e:  # a damaged archive: zipfile, zlib and NumPy's header parser each raise their own
        raise DataError(f"{path} is not a NumPy .npz file this reader can read ({type(e).__name__}: "
                        f"{_first_line(e)})") from None
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise DataError(f"{path}: the member {k!r} is not a NumPy array (.npy)")
    if "x" in arrays:
        xs = _padded(path, arrays)
    else:
        keys = sorted((k for k in arrays if k.startswith("x_") and k[2:].isdigit()), key=lambda k: int(k[2:]))
        if not keys:
            raise DataError(f"{path} has no array 'x' (nor x_0, x_1, …); arrays: {', '.join(arrays) or 'none'}")
        if [int(k[2:]) for k in keys] != list(range(len(keys))):
            raise DataError(f"{path}: the arrays x_0, x_1, … are not numbered 0 to {len(keys) - 1} without gaps")
        xs = [arrays[k] for k in keys]
    out = []
    for i, x in enumerate(xs):
        where = f"{path}: sequence {i}"
        if x.dtype.kind not in "fiub":
            raise DataError(f"{where} holds {x.dtype} values, not numbers")
        x = x.astype(np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise DataError(f"{where} has shape {x.shape}; expected (steps, features)")
        out.append({"x": finish(x, where, missing), "y": None})
    if not out:
        raise DataError(f"data file {path} has no sequences")
    if "y" in arrays:
        y = arrays["y"]
        if y.ndim != 1 or len(y) != len(out):
            raise DataError(f"{path}: y has shape {y.shape}, expected ({len(out)},), one label per sequence")
        for i, value in enumerate(y.tolist()):
            if isinstance(value, float) and not math.isfinite(value):
                raise DataError(f"{path}: sequence {i} has the label / target {value}")
            out[i]["y"] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return out


def _padded(path: Path, arrays: dict) -> list[np.ndarray]:
    x = arrays["x"]
    if x.ndim == 2:
        x = x[:, :, None]  # (N, T): one feature
    if x.ndim != 3:
        raise DataError(f"{path}: x has shape {x.shape}; expected (sequences, steps, features) or (sequences, steps)")
    if "lengths" not in arrays:
        return list(x)
    lengths = arrays["lengths"]
    if lengths.ndim != 1 or len(lengths) != len(x) or lengths.dtype.kind not in "iu":
        raise DataError(f"{path}: lengths must be {len(x)} whole numbers, one per sequence (found shape "
                        f"{lengths.shape}, {lengths.dtype})")
    for i, n in enumerate(lengths.tolist()):
        if not 1 <= n <= x.shape[1]:
            raise DataError(f"{path}: sequence {i} has length {n}, outside 1..{x.shape[1]} (the steps of x)")
    return [x[i, :n] for i, n in enumerate(lengths.tolist())]


def read_long_csv(path: str | Path, id_col: str = "id", time_col: str | None = "time", label_col: str | None = "label",
                  feature_cols: list[str] | None = None, missing: str = "error") -> list[dict]:
    """Long-format CSV with a header: one row per (sequence, time step), the sequence id, the step
    (rows of a sequence are ordered by it; null: file order), the features, and the label, the same
    on every row of a sequence (or no label column: unlabelled, for ``rtk predict``)."""
    path, missing = Path(path), _missing_policy(missing)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
        named = [c for c in (id_col, time_col) if c is not None]
        for col in named:
            if col not in header:
                raise DataError(f"{path}:1: no column '{col}' (columns: {column_names(header)}); set data.id_col / "
                                "data.time_col")
        has_label = label_col is not None and label_col in header
        features = list(feature_cols) if feature_cols else [h for h in header if h not in (*named, label_col)]
        for col in features:
            if col not in header:
                raise DataError(f"{path}:1: no feature column '{col}' (columns: {column_names(header)})")
        if not features:
            raise DataError(f"{path}:1: no feature columns besides {', '.join(named)}"
                            + (f" and {label_col}" if has_label else ""))
        index = {h: i for i, h in enumerate(header)}
        seqs: dict[str, dict] = {}
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise DataError(f"{where}: expected {len(header)} columns like the header, found {len(row)}")
            key = row[index[id_col]].strip()
            if not key:
                raise DataError(f"{where}: empty sequence id in column '{id_col}'")
            seq = seqs.setdefault(key, {"steps": [], "y": None, "line": reader.line_num})
            step = len(seq["steps"]) if time_col is None else _number(row[index[time_col]], where)
            if math.isnan(step) or math.isinf(step):
                raise DataError(f"{where}: the time step in column '{time_col}' must be a number")
            if has_label:
                y = row[index[label_col]].strip()
                if not y:
                    raise DataError(f"{where}: empty label in column '{label_col}'")
                if seq["y"] is not None and y != seq["y"]:
                    raise DataError(f"{where}: sequence '{one_line(key)}' has label '{one_line(y)}' here but "
                                    f"'{one_line(seq['y'])}' on line "
                                    f"{seq['line']}; a sequence has one label")
                seq["y"] = y
            seq["steps"].append((step, reader.line_num, [_number(row[index[c]], f"{where}: column '{one_line(c)}'")
                                                         for c in features]))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    if not seqs:
        raise DataError(f"data file {path} has a header but no rows")
    out = []
    for key, seq in seqs.items():
        steps = sorted(seq["steps"], key=lambda s: s[0])
        for a, b in zip(steps, steps[1:]):
            if a[0] == b[0]:
                raise DataError(f"{path}:{b[1]}: sequence '{one_line(key)}' has time step {b[0]:g} twice "
                                f"(also line {a[1]})")
        x = np.array([s[2] for s in steps], dtype=np.float64)  # (T, F)
        out.append({"x": finish(x, f"{path}: sequence '{one_line(key)}'", missing), "y": seq["y"]})
    return out


def read_series(path: str | Path, missing: str = "error", **csv_options) -> list[dict]:
    """Any of the three formats, by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ts":
        return read_ts(path, missing)
    if suffix == ".npz":
        return read_npz(path, missing)
    if suffix == ".csv":
        return read_long_csv(path, missing=missing, **csv_options)
    raise DataError(f"data file {path}: a sequence file must end in {', '.join(SUFFIXES)} (.ts: the UEA/UCR "
                    "format; .npz: NumPy arrays; .csv: one row per time step)")


# ----------------------------------------------------------------------------- batching
def collate_series(items: list[dict]) -> dict:
    """(T_i, F) float tensors -> x (B, T, F) zero-padded, lengths (B,), and labels or targets."""
    lengths = torch.tensor([len(it["x"]) for it in items], dtype=torch.long)
    x = torch.zeros(len(items), int(lengths.max()), items[0]["x"].shape[1])
    for b, it in enumerate(items):
        x[b, : len(it["x"])] = it["x"]
    batch = {"x": x, "lengths": lengths}
    if "label" in items[0]:
        batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    elif "target" in items[0]:
        batch["targets"] = torch.tensor([it["target"] for it in items], dtype=torch.float32)
    return batch


def channel_stats(xs: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over every real step (a constant channel gets 1)."""
    steps = np.concatenate(xs).astype(np.float64)  # (sum T_i, F)
    std = steps.std(0)
    return steps.mean(0).tolist(), np.where(std > 1e-12, std, 1.0).tolist()


# ----------------------------------------------------------------------------- module
class SeriesDataModule(BucketedLoaders, pl.LightningDataModule):
    """Multivariate float sequences and one label (or one number) each (``vowels``, ``series``)."""

    kind = "series"
    read = staticmethod(read_series)  # the user's files; the named sources are the archive's .ts files
    collate = staticmethod(collate_series)
    length_key = "x"

    def __init__(self, source: str | None = None, train_file: str | None = None, val_file: str | None = None,
                 test_file: str | None = None, target: str = "class", missing: str = "error", id_col: str = "id",
                 time_col: str | None = "time", label_col: str = "label", feature_cols: list[str] | None = None,
                 batch_size: int = 16, eval_batch_size: int = 256, bucketing: bool = True, seed: int = 0,
                 val_fold: int = 1):
        super().__init__()
        if isinstance(val_fold, bool) or not isinstance(val_fold, int) or not 0 <= val_fold <= 9:
            raise ConfigError(f"data.val_fold={val_fold!r} must be a whole number from 0 to 9 (validation: the "
                              "training sequences with i % 10 == data.val_fold)")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}={value!r} must be a whole number of at least 1")
        if target not in TARGETS:
            raise ConfigError(f"data.target={target!r} is not one of: {', '.join(TARGETS)}")
        _missing_policy(missing)
        if source is not None and any((train_file, val_file, test_file)):
            raise ConfigError("set either data.source or data.train_file/val_file/test_file, not both")
        if source is None and not train_file:
            raise ConfigError("no data: set data.source to a named source or data.train_file to your own file")
        if source is not None and source not in UEA_SOURCES:
            raise ConfigError(f"data.source={source!r} is not a named sequence source; known: {', '.join(UEA_SOURCES)}")
        self.source, self.target, self.missing = source, target, missing
        self.files = {"train": train_file, "validation": val_file, "test": test_file}
        self.csv_options = {"id_col": id_col, "time_col": time_col, "label_col": label_col,
                            "feature_cols": list(feature_cols) if feature_cols else None}
        self.batch_size, self.eval_batch_size, self.bucketing, self.seed = batch_size, eval_batch_size, bucketing, seed
        self.val_fold = val_fold
        self.encoded: dict[str, list[dict] | None] = {}
        self.labels: list[str] = []
        self.stats: dict = {}
        self.features = 0
        self.train_sampler: BucketBatchSampler | None = None
        self.start_epoch = 0
        self.start_batch = 0
        self.raw: dict = {}  # the examples as read: no W&B sample table for this head (it shows text)

    def _where(self, split: str) -> str:
        return f"data.source={self.source}" if self.source else str(self.files[split] or self.files["train"])

    def _read(self) -> dict[str, list[dict] | None]:
        if self.source is not None:
            name = UEA_SOURCES[self.source]
            splits = {"train": read_ts(uea_path(name, "train"), self.missing), "validation": None,
                      "test": read_ts(uea_path(name, "test"), self.missing)}
        else:
            splits = {s: (read_series(f, self.missing, **self.csv_options) if f else None)
                      for s, f in self.files.items()}
        if splits["validation"] is None:
            # the standard rule, on the training file only: every 10th sequence (i % 10 == 1); the
            # other folds (data.val_fold) make a 10-fold cross-validation of the training file
            train, fold = splits["train"], self.val_fold
            log.warning("%s: using every 10th training sequence (i %% 10 == %d) for validation",
                        f"data.source={self.source} has no validation split" if self.source else "no validation file",
                        fold)
            splits["validation"] = [ex for i, ex in enumerate(train) if i % 10 == fold]
            splits["train"] = [ex for i, ex in enumerate(train) if i % 10 != fold]
        return splits

    def prepare_data(self) -> None:
        if not self.encoded:
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.encoded:
            return
        splits = self._read()
        train = splits["train"]
        if not train:
            raise DataError(f"the training split of {self._where('train')} is empty (a file of one sequence "
                            "leaves none once validation is carved out; give data.val_file)")
        self.features = train[0]["x"].shape[1]
        for split, rows in splits.items():
            for i, ex in enumerate(rows or []):
                if ex["x"].shape[1] != self.features:
                    raise DataError(f"{self._where(split)}: sequence {i} of the {split} split has {ex['x'].shape[1]} "
                                    f"features, but the training sequences have {self.features}")
                if ex["y"] is None:
                    raise DataError(f"{self._where(split)}: sequence {i} of the {split} split has no label (training "
                                    "needs one per sequence: .ts @classLabel / @targetLabel, an .npz array 'y', or "
                                    f"the CSV column data.label_col={self.csv_options['label_col']!r})")
        if self.target == "class":
            self.labels = sorted({str(ex["y"]) for ex in train})
        else:
            for split, rows in splits.items():
                for i, ex in enumerate(rows or []):
                    ex["y"] = self._number(ex["y"], split, i)
            ys = np.array([ex["y"] for ex in train], dtype=np.float64)
            self.stats["y_mean"], self.stats["y_std"] = float(ys.mean()), float(ys.std()) if ys.std() > 1e-12 else 1.0
        self.stats["mean"], self.stats["std"] = channel_stats([ex["x"] for ex in train])
        self.encoded = {s: None if rows is None else self._encode(rows, s) for s, rows in splits.items()}

    def _number(self, y, split: str, i: int) -> float:
        try:
            value = float(y)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{self._where(split)}: sequence {i} of the {split} split has the target {y!r}, "
                            "which is not a finite number (data.target=regression)")
        return value

    def _encode(self, rows: list[dict], split: str) -> list[dict]:
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for ex in rows:
            item = {"x": torch.from_numpy(ex["x"])}
            if self.target == "regression":
                item["target"] = (ex["y"] - self.stats["y_mean"]) / self.stats["y_std"]
            elif str(ex["y"]) not in index:
                raise DataError(f"{self._where(split)}: label '{ex['y']}' in the {split} split never occurs in "
                                f"training (training labels: {', '.join(self.labels)})")
            else:
                item["label"] = index[str(ex["y"])]
            out.append(item)
        return out

    def spec(self) -> dict:
        """Plain data a checkpoint keeps: what the head needs to rebuild and to read new files alike."""
        return {"kind": self.kind, "target": self.target, "features": self.features, "labels": self.labels,
                "missing": self.missing, "csv": self.csv_options, **self.stats}
