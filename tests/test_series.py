"""Real-valued sequences (task=series, vowels, motions, gunpoint): readers, data module, head, commands.

The readers' quirks (variable lengths, `?` missing values, string labels, regression
targets) on small hand-written files; the UEA archive's own files for the counts the
docs quote; and, marked slow, the commands of the issue run end to end at tiny sizes.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from conftest import TINY

from toolkit.data.series import (SeriesDataModule, UEA_SOURCES, channel_stats, read_long_csv, read_npz, read_series,
                                 read_ts, uea_path)
from toolkit.errors import ConfigError, DataError

TS = """# a comment
@problemName Tiny
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true walk run
@data
1,2,3:4,5,6:walk
1,2,3,4:5,6,7,8:run
7,8:9,10:walk
"""


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- .ts
def test_ts_reads_variable_lengths_channels_and_string_labels(tmp_path):
    rows = read_ts(write(tmp_path / "a.ts", TS))
    assert [r["x"].shape for r in rows] == [(3, 2), (4, 2), (2, 2)]
    assert [r["y"] for r in rows] == ["walk", "run", "walk"]
    np.testing.assert_array_equal(rows[0]["x"], [[1, 4], [2, 5], [3, 6]])
    assert rows[0]["x"].dtype == np.float32


def test_ts_trailing_missing_values_are_padding_not_data(tmp_path):
    rows = read_ts(write(tmp_path / "a.ts", TS.replace("7,8:9,10:walk", "7,8,?,?:9,10,?,?:walk")))
    assert rows[2]["x"].shape == (2, 2)


def test_ts_missing_value_inside_is_an_error_naming_line_step_and_channel(tmp_path):
    path = write(tmp_path / "a.ts", TS.replace("1,2,3,4:5,6,7,8:run", "1,2,3,4:5,?,7,8:run"))
    with pytest.raises(DataError) as e:
        read_ts(path)
    assert str(e.value) == (f"{path}:11: a missing value at step 1 of channel 1; set data.missing=interpolate to "
                            "fill gaps linearly from their neighbours")


def test_ts_missing_values_interpolate_linearly_when_asked(tmp_path):
    path = write(tmp_path / "a.ts", TS.replace("1,2,3,4:5,6,7,8:run", "?,2,?,4:5,6,7,8:run"))
    x = read_ts(path, missing="interpolate")[1]["x"]
    np.testing.assert_array_equal(x[:, 0], [2, 2, 3, 4])  # the first step takes its nearest value


@pytest.mark.parametrize("line, sentence", [
    ("1,2:3,4:jump", "class label 'jump' is not one of the @classLabel labels (walk, run)"),
    ("1,2:3,4:5,6:walk", "3 channels, but @dimensions says 2"),
    ("1,x:3,4:walk", "'x' is not a number"),
    ("1,inf:3,4:walk", "an infinite value at step 1 of channel 0"),
    ("?,?:?:walk", "an empty sequence (no values)"),
])
def test_ts_bad_line_is_one_sentence_with_the_line(tmp_path, line, sentence):
    path = write(tmp_path / "a.ts", TS + line + "\n")
    with pytest.raises(DataError) as e:
        read_ts(path)
    assert str(e.value) == f"{path}:13: {sentence}"


def test_ts_regression_target_and_unlabelled_files(tmp_path):
    reg = TS.replace("@classLabel true walk run", "@targetLabel true").replace(":walk", ":1.5").replace(":run", ":-2")
    assert [r["y"] for r in read_ts(write(tmp_path / "r.ts", reg))] == [1.5, -2.0, 1.5]
    bare = TS.replace("@classLabel true walk run", "@classLabel false").replace(":walk", "").replace(":run", "")
    assert [r["y"] for r in read_ts(write(tmp_path / "b.ts", bare))] == [None, None, None]


def test_ts_without_data_section_names_the_file(tmp_path):
    path = write(tmp_path / "a.ts", "@problemName x\n")
    with pytest.raises(DataError, match=re.escape(f"{path} has no @data line")):
        read_ts(path)


# ----------------------------------------------------------------------------- .npz
def test_npz_padded_with_lengths_and_ragged_list_read_alike(tmp_path):
    a, b = np.arange(6.0).reshape(3, 2), np.arange(10.0).reshape(5, 2)
    padded = np.zeros((2, 5, 2))
    padded[0, :3], padded[1] = a, b
    np.savez(tmp_path / "p.npz", x=padded, lengths=np.array([3, 5]), y=np.array(["up", "down"]))
    np.savez(tmp_path / "r.npz", x_0=a, x_1=b, y=np.array(["up", "down"]))
    for name in ("p.npz", "r.npz"):
        rows = read_npz(tmp_path / name)
        assert [r["x"].shape for r in rows] == [(3, 2), (5, 2)] and [r["y"] for r in rows] == ["up", "down"]
        np.testing.assert_array_equal(rows[1]["x"], b)


def test_npz_univariate_x_of_shape_n_t(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.ones((4, 7)), y=np.arange(4))
    rows = read_npz(tmp_path / "u.npz")
    assert rows[0]["x"].shape == (7, 1) and rows[3]["y"] == 3


def test_npz_object_array_is_refused_because_reading_it_would_unpickle(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.ones((2, 1)), np.ones((3, 1))
    np.savez(tmp_path / "o.npz", x=ragged)
    with pytest.raises(DataError, match="unpickling"):
        read_npz(tmp_path / "o.npz")


@pytest.mark.parametrize("arrays, sentence", [
    ({"x": np.array([[[1.0], [np.nan], [3.0]], [[1.0], [2.0], [3.0]]])},
     "sequence 0: a missing value at step 1 of channel 0"),
    ({"x": np.array([[[1.0], [np.inf]]])}, "sequence 0: an infinite value at step 1 of channel 0"),
    ({"x": np.ones((2, 3, 1)), "lengths": np.array([3, 0])}, "sequence 1 has length 0, outside 1..3"),
    ({"x": np.ones((2, 3, 1)), "y": np.array([1, 2, 3])}, "y has shape (3,), expected (2,), one label per sequence"),
    ({"z": np.ones(3)}, "has no array 'x' (nor x_0, x_1, …); arrays: z"),
])
def test_npz_bad_arrays_are_one_sentence_naming_the_file(tmp_path, arrays, sentence):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as e:
        read_npz(path)
    assert str(path) in str(e.value) and sentence in str(e.value)


def test_npz_that_is_not_an_archive(tmp_path):
    path = write(tmp_path / "x.npz", "id,time,a\n")
    with pytest.raises(DataError, match="not a NumPy .npz file"):
        read_npz(path)


# ----------------------------------------------------------------------------- long CSV
LONG = "id,time,ax,ay,label\ns1,1,0.1,0.2,walk\ns1,0,0.0,0.1,walk\ns2,0,1.0,1.1,run\ns2,1,1.2,1.3,run\ns2,2,1.4,1.5,run\n"


def test_long_csv_groups_by_id_orders_by_time_and_keeps_first_sight_order(tmp_path):
    rows = read_long_csv(write(tmp_path / "a.csv", LONG))
    assert [r["y"] for r in rows] == ["walk", "run"]
    np.testing.assert_allclose(rows[0]["x"], [[0.0, 0.1], [0.1, 0.2]])
    assert rows[1]["x"].shape == (3, 2)


@pytest.mark.parametrize("edit, sentence", [
    (("s2,1,1.2,1.3,run", "s2,1,1.2,run"), ":5: expected 5 columns like the header, found 4"),
    (("s2,1,1.2,1.3,run", "s2,1,1.2,1.3,walk"), ":5: sequence 's2' has label 'walk' here but 'run' on line 4; a sequence has one label"),
    (("s2,2,1.4", "s2,1,1.4"), ":6: sequence 's2' has time step 1 twice (also line 5)"),
    (("s2,1,1.2,1.3", "s2,1,1.2,abc"), ":5: column 'ay': 'abc' is not a number"),
    (("id,time", "seq,time"), ":1: no column 'id' (columns: seq, time, ax, ay, label); set data.id_col / data.time_col"),
])
def test_long_csv_bad_row_is_one_sentence_with_the_line(tmp_path, edit, sentence):
    path = write(tmp_path / "a.csv", LONG.replace(*edit))
    with pytest.raises(DataError) as e:
        read_long_csv(path)
    assert str(e.value) == f"{path}{sentence}"


def test_unknown_suffix_says_which_formats_are_read(tmp_path):
    with pytest.raises(DataError, match=r"must end in \.ts, \.npz, \.csv"):
        read_series(write(tmp_path / "a.txt", "1,2"))


# ----------------------------------------------------------------------------- data module
def _npz(path, n, steps=5, features=2, labels=("a", "b"), seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(3.0, 2.0, (n, steps, features)), y=np.array([labels[i % len(labels)] for i in range(n)]))
    return path


def test_standardisation_is_fitted_on_the_training_split_only(tmp_path):
    train, test = _npz(tmp_path / "train.npz", 20), _npz(tmp_path / "test.npz", 10, seed=1)
    test_x = np.load(test)["x"]
    np.savez(test, x=test_x + 100.0, y=np.load(test)["y"])  # a shifted test set must not move the statistics
    dm = SeriesDataModule(train_file=str(train), test_file=str(test))
    dm.setup()
    kept = [x for i, x in enumerate(np.load(train)["x"]) if i % 10 != 1]  # validation carved out: i % 10 == 1
    assert len(dm.encoded["train"]) == 18 and len(dm.encoded["validation"]) == 2
    mean, std = channel_stats(kept)
    assert dm.spec()["mean"] == pytest.approx(mean) and dm.spec()["std"] == pytest.approx(std)
    assert dm.spec()["mean"][0] == pytest.approx(3.0, abs=1.0)


def test_val_fold_chooses_which_tenth_of_the_training_file_validates(tmp_path):
    train = _npz(tmp_path / "train.npz", 40)
    seen = []
    for fold in range(10):
        dm = SeriesDataModule(train_file=str(train), val_fold=fold)
        dm.setup()
        assert len(dm.encoded["validation"]) == 4 and len(dm.encoded["train"]) == 36
        seen += [x["x"].sum().item() for x in dm.encoded["validation"]]
    # the ten folds validate on every training sequence exactly once: a 10-fold cross-validation
    everything = SeriesDataModule(train_file=str(train), val_file=str(train))
    everything.setup()
    assert sorted(seen) == pytest.approx(sorted(x["x"].sum().item() for x in everything.encoded["train"]))


@pytest.mark.parametrize("fold", [10, -1, 1.5, True])
def test_val_fold_outside_0_to_9_is_one_sentence(tmp_path, fold):
    with pytest.raises(ConfigError, match=rf"data.val_fold={fold!r} must be a whole number from 0 to 9"):
        SeriesDataModule(train_file=str(_npz(tmp_path / "train.npz", 20)), val_fold=fold)


def test_feature_count_differing_between_splits_is_one_sentence(tmp_path):
    train, test = _npz(tmp_path / "train.npz", 20), _npz(tmp_path / "test.npz", 4, features=3)
    with pytest.raises(DataError) as e:
        SeriesDataModule(train_file=str(train), test_file=str(test)).setup()
    assert str(e.value) == (f"{test}: sequence 0 of the test split has 3 features, but the training sequences "
                            "have 2")


def test_label_missing_from_training_is_one_sentence(tmp_path):
    train, test = _npz(tmp_path / "train.npz", 20), _npz(tmp_path / "test.npz", 4, labels=("a", "c"))
    with pytest.raises(DataError) as e:
        SeriesDataModule(train_file=str(train), test_file=str(test)).setup()
    assert str(e.value) == f"{test}: label 'c' in the test split never occurs in training (training labels: a, b)"


def test_regression_target_must_be_a_number(tmp_path):
    train = _npz(tmp_path / "train.npz", 20)
    with pytest.raises(DataError, match="has the target 'a', which is not a finite number"):
        SeriesDataModule(train_file=str(train), target="regression").setup()


def test_bad_data_options_are_one_sentence():
    with pytest.raises(ConfigError, match="data.target='labels' is not one of: class, regression"):
        SeriesDataModule(train_file="x.npz", target="labels")
    with pytest.raises(ConfigError, match="data.source='ecg' is not a named sequence source"):
        SeriesDataModule(source="ecg")


# ----------------------------------------------------------------------------- the archive's files
@pytest.mark.parametrize("source, counts, features, lengths, labels", [
    ("japanese_vowels", (270, 370), 12, (7, 29), [str(i) for i in range(1, 10)]),
    ("basic_motions", (40, 40), 6, (100, 100), ["Badminton", "Running", "Standing", "Walking"]),
    ("gunpoint", (50, 150), 1, (150, 150), ["1", "2"]),
])
def test_uea_files_from_the_aeon_wheel_hold_what_the_docs_say(source, counts, features, lengths, labels):
    name = UEA_SOURCES[source]
    train, test = read_ts(uea_path(name, "train")), read_ts(uea_path(name, "test"))
    assert (len(train), len(test)) == counts
    steps = [len(r["x"]) for r in train + test]
    assert (min(steps), max(steps)) == lengths
    assert {r["x"].shape[1] for r in train + test} == {features}
    assert sorted({r["y"] for r in train}) == labels


# ----------------------------------------------------------------------------- head and checkpoint
def _trained_checkpoint(tmp_path, **model):
    """A real series checkpoint (untrained weights), written as the train app writes one."""
    from toolkit.heads import HEADS

    dm = SeriesDataModule(train_file=str(_npz(tmp_path / "train.npz", 20)))
    dm.setup()
    net = HEADS["series"].task(spec=dm.spec(), cell={"name": "gru", "backend": "auto"}, hidden_size=8, task_name="series",
                          **model)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": net.state_dict(), "hyper_parameters": dict(net.hparams), "epoch": 0,
                "global_step": 0}, path)
    return path, net


def test_checkpoint_keeps_the_standardisation_and_predicts_the_same(tmp_path):
    from toolkit.checkpoints import load_task

    path, net = _trained_checkpoint(tmp_path, projection=4, pooling="mean")
    loaded = load_task(path, expect="series")
    assert loaded.mean.tolist() == pytest.approx(net.hparams.spec["mean"])
    xs = [np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32) for n in (3, 7)]
    net.eval()
    assert loaded.predict_arrays(xs) == net.predict_arrays(xs)
    assert loaded.project.out_features == 4 and loaded.rnn.input_size == 4


def test_padding_does_not_change_a_prediction(tmp_path):
    _, net = _trained_checkpoint(tmp_path, pooling="max")
    net.eval()
    short = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    alone = net.predict_arrays([short])[0]
    beside_a_long_one = net.predict_arrays([short, np.ones((40, 2), np.float32)])[0]
    assert alone[0] == beside_a_long_one[0] and alone[1] == pytest.approx(beside_a_long_one[1], abs=1e-6)


def test_downsample_averages_each_window_of_a_sequences_own_frames(tmp_path):
    _, net = _trained_checkpoint(tmp_path, downsample=3)
    x = torch.arange(2 * 8 * 2, dtype=torch.float32).view(2, 8, 2)
    lengths = torch.tensor([8, 4])
    got = net.window_means(x, lengths)
    assert got.shape == (2, 3, 2)
    torch.testing.assert_close(got[0], torch.stack([x[0, :3].mean(0), x[0, 3:6].mean(0), x[0, 6:8].mean(0)]))
    # the second sequence has 4 real frames: one full window and a last window of one frame, then padding
    torch.testing.assert_close(got[1, :2], torch.stack([x[1, :3].mean(0), x[1, 3]]))
    assert net.step_lengths({"lengths": lengths}).tolist() == [3, 2]


def test_downsample_one_changes_nothing_and_padding_never_enters_a_window(tmp_path):
    _, plain = _trained_checkpoint(tmp_path, pooling="mean")
    x = torch.randn(2, 7, 2)
    assert plain.window_means(x, torch.tensor([7, 5])) is x
    _, net = _trained_checkpoint(tmp_path, pooling="mean", downsample=4)
    net.eval()
    short = np.random.default_rng(2).normal(size=(5, 2)).astype(np.float32)
    alone = net.predict_arrays([short])[0]
    beside_a_long_one = net.predict_arrays([short, np.full((30, 2), 100.0, np.float32)])[0]
    assert alone[0] == beside_a_long_one[0] and alone[1] == pytest.approx(beside_a_long_one[1], abs=1e-6)


def test_downsample_must_be_a_whole_number_and_a_downsampled_model_refuses_to_stream(tmp_path, compose):
    import toolkit
    from toolkit.config import validate

    with pytest.raises(ConfigError, match=r"model.downsample=0 must be a whole number of at least 1"):
        validate(compose(["task=gunpoint", "model.downsample=0"]))
    model = toolkit.load(_trained_checkpoint(tmp_path, direction="uni", downsample=2)[0])
    assert model.predict([np.zeros((5, 2), np.float32)])[0] in model.labels
    with pytest.raises(ConfigError, match=r"model.downsample=2 cannot stream frame by frame"):
        model.stream()


def test_augmentation_changes_training_inputs_only(tmp_path):
    _, net = _trained_checkpoint(tmp_path, augment_scale=0.5, augment_noise=0.3)
    batch = {"x": torch.randn(4, 6, 2), "lengths": torch.tensor([6, 6, 5, 3])}
    net.eval()
    torch.testing.assert_close(net.encode(batch), net.encode(batch))  # evaluation reads the data as it is
    net.train()
    torch.manual_seed(0)
    x = net.augment(batch["x"])
    assert not torch.allclose(x, batch["x"])
    _, plain = _trained_checkpoint(tmp_path)
    assert plain.augment(batch["x"]) is batch["x"]


def test_augmentation_scale_draws_one_factor_per_sequence_and_channel(tmp_path):
    _, net = _trained_checkpoint(tmp_path, augment_scale=0.5)
    x = torch.ones(3, 7, 2)
    factors = net.augment(x)
    assert torch.equal(factors, factors[:, :1].expand_as(factors))  # the same factor at every step
    assert len({round(v, 6) for v in factors[:, 0].flatten().tolist()}) == 6  # a factor per sequence and channel


@pytest.mark.parametrize("key", ["augment_scale", "augment_noise"])
def test_augmentation_strengths_must_be_numbers_of_at_least_zero(compose, key):
    from toolkit.config import validate

    with pytest.raises(ConfigError, match=rf"model.{key}=-0.1 must be a number in \[0, 10\)"):
        validate(compose(["task=motions", f"model.{key}=-0.1"]))


def test_rtk_predict_prints_label_and_probability_per_sequence(rtk, tmp_path):
    path, _ = _trained_checkpoint(tmp_path)
    inputs = tmp_path / "new.npz"
    np.savez(inputs, x=np.ones((3, 6, 2)))
    r = rtk("predict", f"ckpt={path}", f"input={inputs}")
    assert r.returncode == 0, r.explain()
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        index, label, prob = line.split("\t")
        assert index == str(i) and label in ("a", "b") and 0.5 <= float(prob) <= 1.0


def test_rtk_predict_with_the_wrong_feature_count_is_one_sentence(rtk, tmp_path):
    path, _ = _trained_checkpoint(tmp_path)
    inputs = tmp_path / "new.npz"
    np.savez(inputs, x=np.ones((3, 6, 5)))
    r = rtk("predict", f"ckpt={path}", f"input={inputs}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {inputs}: sequence 0 has 5 features; this model was trained on 2"


def test_regression_with_a_classification_monitor_is_refused_up_front(compose):
    from toolkit.config import validate

    with pytest.raises(ConfigError, match="use task=series_regression"):
        validate(compose(["task=series", "data.target=regression", "task.monitor=val_acc"]))


def test_rtk_train_on_a_bad_file_is_one_sentence_exit_2_and_no_run_dir(monkeypatch, capsys, tmp_path):
    from conftest import run_app_in_process

    path = write(tmp_path / "train.ts", TS.replace("1,2,3,4:5,6,7,8:run", "1,2,3,4:5,?,7,8:run"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("RTK_DEBUG", raising=False)
    run = tmp_path / "run"
    code = run_app_in_process(monkeypatch, ["task=series", f"data.train_file={path}", *TINY, f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: {path}:11: a missing value at step 1 of channel 1; set data.missing=interpolate to fill gaps "
        "linearly from their neighbours"]
    assert not run.exists(), "a failed run left its run dir behind"


# ----------------------------------------------------------------------------- end to end (slow)
SMALL = [*TINY, "trainer.enable_model_summary=false"]


def _summary_metric(stdout: str, name: str) -> float:
    line = next(l for l in stdout.splitlines() if l.startswith("test "))
    return float(re.search(rf"\b{name} (\S+)", line).group(1))


@pytest.mark.slow
def test_user_npz_files_train_classify_and_regress(rtk, tmp_path):
    train, test = _npz(tmp_path / "train.npz", 40), _npz(tmp_path / "test.npz", 10, seed=1)
    r = rtk("train", "task=series", f"data.train_file={train}", f"data.test_file={test}", *SMALL,
            f"hydra.run.dir={tmp_path / 'cls'}")
    assert r.returncode == 0, r.explain()
    assert 0 <= _summary_metric(r.stdout, "acc") <= 1
    y = np.arange(40, dtype=float)
    np.savez(train, x=np.load(train)["x"], y=y)
    np.savez(test, x=np.load(test)["x"], y=y[:10])
    r = rtk("train", "task=series_regression", f"data.train_file={train}", f"data.test_file={test}", *SMALL,
            f"hydra.run.dir={tmp_path / 'reg'}")
    assert r.returncode == 0, r.explain()
    results = json.loads((tmp_path / "reg" / "results.json").read_text())
    assert set(results["test"]) == {"test_loss", "test_mse", "test_mae"}
    assert results["test"]["test_mae"] ** 2 <= results["test"]["test_mse"] + 1e-6  # MAE² <= MSE, in target units


@pytest.mark.slow
def test_grid_over_tasks_cells_and_directions_and_its_report(rtk, tmp_path):
    sweep = tmp_path / "multirun"
    r = rtk("train", "-m", "task=vowels,motions", "cell=rnn,gru,lstm", "direction=uni,bi", *SMALL,
            f"hydra.sweep.dir={sweep}", timeout=900)
    assert r.returncode == 0, r.explain()
    assert r.stdout.count("Recurrent Toolkit · ") == 12
    report = rtk("report", str(sweep))
    assert report.returncode == 0, report.explain()
    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(0 <= float(row["test_acc"]) <= 1 for row in rows)
    assert {(row["task"], row["cell"], row["direction"]) for row in rows} == {
        (t, c, d) for t in ("vowels", "motions") for c in ("rnn", "gru", "lstm") for d in ("uni", "bi")}


@pytest.mark.slow
def test_vowels_checkpoint_predicts_an_archive_file_and_diagnose_draws_its_plot(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", "task=vowels", *SMALL, "diagnose=true", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    assert (run / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((run / "gradients.csv").read_text().splitlines()) > 7  # 7-29 frames: reaches back past 6 steps
    test_file = uea_path("JapaneseVowels", "test")
    p = rtk("predict", f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"input={test_file}")
    assert p.returncode == 0, p.explain()
    lines = p.stdout.splitlines()
    assert len(lines) == 370 and all(re.fullmatch(r"\d+\t[1-9]\t[01]\.\d{4}\tgold [1-9]", l) for l in lines)


@pytest.mark.slow
def test_ddp_cpu_gives_the_same_test_metrics_as_one_process(rtk, tmp_path):
    common = ["task=motions", *SMALL, "trainer.limit_test_batches=null"]
    trained = tmp_path / "trained"
    r = rtk("train", *common, "trainer.max_epochs=3", f"hydra.run.dir={trained}", timeout=300)
    assert r.returncode == 0, r.explain()
    ckpt = f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"
    single = rtk("train", *common, "trainer.max_epochs=3", ckpt, f"hydra.run.dir={tmp_path / 'one'}", timeout=300)
    ddp = rtk("train", *common, "trainer.max_epochs=3", ckpt, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'two'}",
              timeout=300)
    assert single.returncode == 0 and ddp.returncode == 0, single.explain() + ddp.explain()
    for name in ("acc", "f1"):
        assert _summary_metric(single.stdout, name) == _summary_metric(ddp.stdout, name)


@pytest.mark.slow
def test_a_plugin_cell_trains_on_sequences_with_no_change(rtk, tmp_path):
    r = rtk("train", "task=gunpoint", "cell=mingru", *SMALL, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.explain()
    assert "mingru" in r.stdout and 0 <= _summary_metric(r.stdout, "acc") <= 1


# ----------------------------------------------------------------------------- Python API and streaming
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
def test_toolkit_load_predicts_arrays_in_one_batch_and_streams_frame_by_frame(tmp_path, pooling):
    import toolkit

    path, net = _trained_checkpoint(tmp_path, pooling=pooling, direction="uni")
    model = toolkit.load(path)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(n, 2)).astype(np.float32) for n in (5, 2, 9)]
    probs = model.predict_proba(xs)
    assert probs.shape == (3, len(model.labels)) and np.allclose(probs.sum(1), 1, atol=1e-6)
    assert [(label, pytest.approx(float(p.max()), abs=1e-6)) for label, p in zip(model.predict(xs), probs)] \
        == net.eval().predict_arrays(xs)
    x = xs[2]
    prefixes = model.predict_proba([x[: t + 1] for t in range(len(x))])  # each prefix run whole
    stream = model.stream()
    got = np.concatenate([stream.feed(x[:4]).probs, stream.feed(x[4:5]).probs, stream.feed(x[5:]).probs])
    np.testing.assert_allclose(got, prefixes, atol=1e-5, rtol=0)
    assert stream.steps == len(x)


def test_the_series_api_refuses_text_and_arrays_of_the_wrong_shape_in_one_sentence(tmp_path):
    import toolkit
    from toolkit.errors import ConfigError

    model = toolkit.load(_trained_checkpoint(tmp_path, direction="uni")[0])
    with pytest.raises(ConfigError, match=r"sequence number 2 has shape \(4, 3\); this model reads \(T, 2\) arrays"):
        model.predict([np.zeros((3, 2)), np.zeros((4, 3))])
    with pytest.raises(ConfigError, match="sequence number 1 holds NaN or infinite values"):
        model.predict([np.full((3, 2), np.nan)])
    with pytest.raises(ConfigError, match="reads arrays, not text"):
        model.stream().feed("hello")


def test_rtk_export_of_a_series_model_is_refused_in_one_sentence(tmp_path):
    import toolkit
    from toolkit.export import ExportError, check_exportable

    model = toolkit.load(_trained_checkpoint(tmp_path, direction="uni")[0])
    with pytest.raises(ExportError, match="a series model cannot be exported: its head declares no export inputs"):
        check_exportable(model)
