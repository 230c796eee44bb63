"""``ema=<decay>``: the moving average of the weights is what is validated, checkpointed, tested and served."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY
from toolkit.callbacks import MovingAverage


class Scalar(pl.LightningModule):
    """One weight pulled towards 10 by SGD; validation and test log the weight they see."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.w - 10) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", ((self.w - 10) ** 2).sum())

    def test_step(self, batch, batch_idx):
        self.log("test_w", self.w.detach().sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=1)


def test_the_best_checkpoint_and_its_test_read_the_average_not_the_trained_weights(tmp_path):
    model = Scalar()
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val_loss")
    trainer = pl.Trainer(max_epochs=3, callbacks=[best, MovingAverage(0.5)], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, loader(), loader())
    ckpt = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    average, trained = ckpt["state_dict"]["w"].item(), ckpt["current_model_state"]["w"].item()
    assert 0 < average < trained < 10  # the average lags behind the weights it follows
    # the validated value is the average's: its loss is what picked the checkpoint
    assert best.best_model_score.item() == pytest.approx((average - 10) ** 2, rel=1e-5)
    test = trainer.test(model, loader(), ckpt_path=best.best_model_path, verbose=False)[0]
    # Lightning's own EMAWeightAveraging reloads current_model_state here and tests `trained`
    assert test["test_w"] == pytest.approx(average)


def test_training_goes_on_from_the_trained_weights_when_a_checkpoint_is_resumed(tmp_path):
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="one", save_on_train_epoch_end=True)
    first = pl.Trainer(max_epochs=1, callbacks=[saver, MovingAverage(0.5)], logger=False,
                       enable_progress_bar=False, enable_model_summary=False)
    first.fit(Scalar(), loader())
    saved = torch.load(tmp_path / "one.ckpt", map_location="cpu", weights_only=True)
    average, trained = saved["state_dict"]["w"].item(), saved["current_model_state"]["w"].item()
    assert average < trained
    model = Scalar()
    second = pl.Trainer(max_epochs=2, callbacks=[MovingAverage(0.5)], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    seen = []
    model.on_train_start = lambda: seen.append(model.w.item())
    second.fit(model, loader(), ckpt_path=tmp_path / "one.ckpt")
    assert seen == [pytest.approx(trained)]  # not the average the checkpoint's state_dict holds


@pytest.mark.slow
def test_a_run_with_a_moving_average_trains_tests_and_predicts(rtk, tmp_path):
    run = tmp_path / "run"
    r = rtk("train", "task=peptides", "hidden_size=16", *TINY, "trainer.max_epochs=2", "ema=0.9",
            f"hydra.run.dir={run}")
    assert r.returncode == 0, r.explain()
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["test"]["test_acc"] <= 1
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert not torch.equal(ckpt["state_dict"]["out.weight"], ckpt["current_model_state"]["out.weight"])
    p = rtk("predict", f"ckpt={run}/checkpoints/best.ckpt", "text=KWKLFKKIGAVLKVL")
    assert p.returncode == 0, p.explain()
    assert p.stdout.strip()
