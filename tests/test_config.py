"""The Hydra config: what composes, what `validate` rejects before anything is built, what ships."""

from __future__ import annotations

import importlib.resources

import pytest
from omegaconf import OmegaConf

from toolkit.cells import available_cells
from toolkit.config import validate
from toolkit.errors import ConfigError

TASKS = ["ner", "sentiment", "peptides", "tagging", "classification"]
BUILTIN_CELLS = ["gru", "gru_simple", "lstm", "peephole_lstm", "rnn"]


def errors_of(compose, overrides) -> str:
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides))
    return str(e.value)


def test_turning_the_ner_gazetteers_off_asks_for_gazetteer_dim_null_too_before_any_data_loads(compose):
    with pytest.raises(ConfigError, match=r"^model.gazetteer_dim=32 needs data.gazetteer \(the flags it maps\): set "
                                          r"data.gazetteer=\[…\] or model.gazetteer_dim=null$"):
        validate(compose(["data.gazetteer=null"]))
    validate(compose(["data.gazetteer=null", "model.gazetteer_dim=null"]))


def test_default_config_is_ner_with_a_bidirectional_lstm(compose):
    cfg = compose([])
    assert cfg.task.name == "ner" and cfg.task.head == "tagging"
    assert cfg.cell.name == "lstm"
    assert cfg.direction == "bi"  # the task's default wins over train.yaml's "uni"
    assert cfg.data.source == "wnut16"
    # docs/results.md#ner-word-statistics-now-the-default, #ner-brown-clusters-now-the-default
    assert list(cfg.data.gazetteer) == ["geonames", "census_names", "word_stats", "brown_clusters"]
    assert cfg.model.gazetteer_dim == 32
    assert cfg.logger.name == "csv"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.deterministic is True
    validate(cfg)


def test_sentiment_default_is_a_two_layer_bilstm_with_the_vader_lexicon_and_adversarial_training(compose):
    # chosen on validation accuracy over seeds 1-3 (docs/results.md#sentiment-a-second-layer-now-the-default,
    # docs/results.md#adversarial-training-modeladversarial)
    cfg = compose(["task=sentiment"])
    assert (cfg.depth, cfg.direction, cfg.model.rnn_dropout) == (2, "bi", 0.3)
    assert cfg.data.lexicon == "vader" and cfg.model.pooling == "max"
    assert cfg.model.adversarial == 5.0
    assert compose(["task=classification"]).model.adversarial == 0.0  # a user's own data starts without it
    validate(cfg)


def test_command_line_overrides_beat_the_task_defaults(compose):
    cfg = compose(["task=ner", "direction=uni", "depth=2", "hidden_size=8", "seed=1"])
    assert (cfg.direction, cfg.depth, cfg.hidden_size, cfg.seed) == ("uni", 2, 8, 1)


def test_all_builtin_cells_are_available():
    assert set(BUILTIN_CELLS) <= set(available_cells())


@pytest.mark.parametrize("cell", available_cells())
@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_with_every_cell(compose, task, cell):
    cfg = compose([f"task={task}", f"cell={cell}"])
    assert cfg.task.name == task and cfg.cell.name == cell
    assert cfg.task.monitor.startswith("val_")
    validate(cfg)


@pytest.mark.parametrize("task, source, monitor", [
    ("ner", "wnut16", "val_f1"), ("sentiment", "vader_movies", "val_acc"),
    ("peptides", "peptides", "val_acc"), ("tagging", None, "val_f1"), ("classification", None, "val_acc")])
def test_each_task_reads_its_source_and_monitors_its_metric(compose, task, source, monitor):
    cfg = compose([f"task={task}"])
    assert cfg.data.source == source
    assert cfg.task.monitor == monitor and cfg.task.mode == "max"


def test_hydra_run_dir_defaults_under_runs_by_task(compose):
    cfg = compose(["task=peptides"])
    assert OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"].startswith("runs/${task.name}/")


def test_depth_0_is_rejected(compose):
    assert "depth=0 must be a whole number of at least 1" in errors_of(compose, ["depth=0"])


def test_hidden_size_0_is_rejected(compose):
    assert "hidden_size=0 must be a whole number of at least 1" in errors_of(compose, ["hidden_size=0"])


def test_direction_sideways_is_rejected(compose):
    assert "direction='sideways' must be 'uni' or 'bi'" in errors_of(compose, ["direction=sideways"])


def test_misspelt_trainer_key_gets_a_suggestion(compose):
    msg = errors_of(compose, ["+trainer.max_epoch=3"])
    assert "trainer.max_epoch is not a Lightning Trainer argument (did you mean trainer.max_epochs?)" in msg


def test_trainer_keys_the_toolkit_sets_are_reserved(compose):
    assert "trainer.logger is set by the toolkit" in errors_of(compose, ["+trainer.logger=true"])


def test_unknown_cell_lists_the_available_cells(compose):
    msg = errors_of(compose, ["cell.name=minlstm_typo"])
    assert "unknown cell 'minlstm_typo'" in msg
    assert "available cells: " + ", ".join(available_cells()) in msg


def test_unknown_cell_hparam_is_rejected(compose):
    msg = errors_of(compose, ["cell=gru", "+cell.foo=1"])
    assert "cell 'gru' got unknown hparam 'foo'; accepted hparams: reset" in msg


def test_bad_gru_reset_value_is_rejected_before_anything_is_built(compose):
    msg = errors_of(compose, ["cell=gru", "cell.reset=sideways"])
    assert "reset" in msg and "sideways" in msg and "before" in msg and "after" in msg


def test_bad_backend_is_rejected(compose):
    assert "cell.backend='cudnn' is not one of: auto, native, sequence, loop" in errors_of(
        compose, ["cell.backend=cudnn"])


def test_other_bad_values_are_rejected(compose):
    msg = errors_of(compose, ["patience=0", "model.dropout=1.5", "model.lr=0", "seed=1.5"])
    for part in ("patience=0", "model.dropout=1.5", "model.lr=0", "seed=1.5"):
        assert part in msg


@pytest.mark.parametrize("value", ["1", "0", "-0.5", "true", "fast"])
def test_a_moving_average_decay_outside_0_1_is_rejected(compose, value):
    msg = errors_of(compose, [f"ema={value}"])
    assert msg.startswith("ema=") and "must be a decay between 0 and 1" in msg


def test_every_problem_is_reported_at_once(compose):
    msg = errors_of(compose, ["depth=0", "hidden_size=0", "direction=sideways", "+trainer.max_epoch=3",
                              "cell.name=nosuchcell"])
    parts = msg.split("; ")
    assert parts[0] == "depth=0 must be a whole number of at least 1"
    for needle in ("depth=0", "hidden_size=0", "direction='sideways'", "trainer.max_epoch ",
                   "unknown cell 'nosuchcell'"):
        assert needle in msg, needle


def test_bidirectional_language_model_is_rejected_in_one_sentence(compose):
    msg = errors_of(compose, ["task=char_lm", "direction=bi"])
    assert "direction=bi with task=char_lm" in msg and "direction=uni" in msg


def test_conf_folder_ships_inside_the_package():
    conf = importlib.resources.files("toolkit.conf")
    assert conf.joinpath("train.yaml").is_file()

    def names(group):
        return {p.name.removesuffix(".yaml") for p in conf.joinpath(group).iterdir() if p.name.endswith(".yaml")}

    assert set(TASKS) <= names("task")
    assert set(BUILTIN_CELLS) <= names("cell")
    assert {"cpu", "gpu", "ddp", "ddp_cpu"} <= names("trainer")
    assert {"csv", "wandb", "tensorboard", "none"} <= names("logger")


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_cpu"])
@pytest.mark.parametrize("logger", ["csv", "wandb", "tensorboard", "none"])
def test_every_trainer_and_logger_composes(compose, trainer, logger):
    cfg = compose([f"trainer={trainer}", f"logger={logger}"])
    assert cfg.logger.name == logger
    validate(cfg)


def test_ddp_cpu_runs_two_cpu_processes(compose):
    cfg = compose(["trainer=ddp_cpu"])
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == ("cpu", 2, "ddp")


def test_head_hyper_parameters_are_checked_with_the_rest_before_any_data_and_all_at_once(compose):
    # a typo in model.decode or model.pooling used to cost a data load and be reported alone
    msg = errors_of(compose, ["task=ner", "model.decode=vitterbi", "model.char_kernel=2", "model.dropout=2",
                              "seed=1.5"])
    for needle in ("model.decode='vitterbi' must be one of", "model.char_kernel=2 must be an odd whole number",
                   "model.dropout=2 must be a number in [0, 1)", "seed=1.5"):
        assert needle in msg, needle
    assert "model.pooling='maxx' is not one of: last, mean, max, attention" in errors_of(
        compose, ["task=sentiment", "model.pooling=maxx"])
    assert "model.beam_size=0 must be a whole number of at least 1" in errors_of(
        compose, ["task=g2p", "model.beam_size=0"])
