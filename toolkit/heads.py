"""The head families: one declaration each, and the one place a head is registered.

A head family is everything one kind of output needs, end to end. Its
declaration names, under the one name used everywhere (``task.head`` in the
config, the data module's ``kind``, ``hyper_parameters["head"]`` in a checkpoint):

- ``task``: the LightningModule (``toolkit/tasks/<module>.py``);
- ``data``: the LightningDataModule beside it (``toolkit/data/<module>.py``), whose
  ``read`` reads the user's files (named sources are in ``toolkit.data.sources``);
- ``config``: the ``conf/task/<config>.yaml`` for the user's own files, which the
  named tasks of this head extend;
- ``last_step_loss``: the loss ``rtk train diagnose=true`` differentiates, or None
  when the head has none (the diagnostic then refuses the head in one sentence);
- the hooks the commands and the Python API call: ``predict`` (model, text -> the
  printed lines), ``score`` (model, tokens -> log-probabilities), ``generate``
  (model.sample), ``export``, ``predict_file`` (model, path -> the printed lines: ``rtk predict
  input=FILE`` for a head that reads whole files rather than lines of text); None where the head
  offers no such thing;
- ``api``: the class of batch methods ``toolkit.load`` returns for this head
  (``toolkit/inference.py``); None: the plain ``Model``, one text at a time.

Adding a head: write the two modules and the YAML, then add one ``register(Head(…))``
below (docs/tasks.md, "Adding a head").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from toolkit.data.base import SplitDataModule
from toolkit.data.classification import ClassificationDataModule
from toolkit.data.lm import LanguageModelDataModule
from toolkit.data.seq2seq import PairsDataModule
from toolkit.data.series import SeriesDataModule
from toolkit.data.tagging import TaggingDataModule
from toolkit.inference import Classifier, LanguageModel, Model, Series, Tagger, Transducer
from toolkit.tasks import classification, lm, series, tagging
from toolkit.tasks.base import SequenceTask
from toolkit.tasks.classification import ClassificationTask
from toolkit.tasks.lm import LanguageModelTask
from toolkit.tasks.seq2seq import Seq2SeqTask
from toolkit.tasks.series import SeriesTask
from toolkit.tasks.tagging import TaggingTask


@dataclass(frozen=True)
class Head:
    """One head family (see the module docstring)."""

    name: str
    task: type[SequenceTask]
    data: type[SplitDataModule]
    config: str
    last_step_loss: Callable[[SequenceTask, dict], Tensor] | None = None
    predict: Callable[[SequenceTask, str], list[str]] | None = None
    score: Callable[[SequenceTask, list[str]], dict] | None = None
    generate: Callable[..., list[list[str]]] | None = None
    export: Callable[..., object] | None = None
    predict_file: Callable[[SequenceTask, str], list[str]] | None = None
    api: type[Model] | None = None  # the batch methods toolkit.load returns (toolkit/inference.py)

    @property
    def read(self) -> Callable[..., list[dict]]:
        """The reader of the user's files (``data.train_file`` …)."""
        return self.data.read


HEADS: dict[str, Head] = {}


def register(head: Head) -> Head:
    """Add ``head`` to :data:`HEADS`; its task and data module must carry its name."""
    if head.name in HEADS:
        raise ValueError(f"head '{head.name}' is registered twice")
    for where, name in ((f"{head.task.__name__}.head", head.task.head), (f"{head.data.__name__}.kind", head.data.kind)):
        if name != head.name:
            raise ValueError(f"head '{head.name}': {where} is {name!r}; a head has one name everywhere")
    HEADS[head.name] = head
    return head


register(Head("tagging", TaggingTask, TaggingDataModule, config="tagging",
              last_step_loss=tagging.last_step_loss, predict=TaggingTask.predict_lines, api=Tagger))
register(Head("classification", ClassificationTask, ClassificationDataModule, config="classification",
              last_step_loss=classification.last_step_loss, predict=ClassificationTask.predict_lines, api=Classifier))
register(Head("language_model", LanguageModelTask, LanguageModelDataModule, config="lm",
              last_step_loss=lm.last_step_loss, predict=LanguageModelTask.predict_lines,
              score=LanguageModelTask.score_tokens, generate=LanguageModelTask.sample, api=LanguageModel))
# Not a last-step loss: the decoder reads the encoder's final state and attends over every step.
register(Head("seq2seq", Seq2SeqTask, PairsDataModule, config="seq2seq", predict=Seq2SeqTask.predict_lines,
              api=Transducer))
register(Head("series", SeriesTask, SeriesDataModule, config="series", last_step_loss=series.last_step_loss,
              predict=SeriesTask.predict_lines, predict_file=SeriesTask.predict_file_lines, api=Series))


def diagnose_problem(name: str) -> str | None:
    """Why ``diagnose=true`` cannot measure a model of head ``name`` (it declares no last-step loss), or None."""
    if HEADS[name].last_step_loss is not None:
        return None
    having = [n for n, h in HEADS.items() if h.last_step_loss is not None]
    return (f"diagnose=true: the gradient diagnostic has no last-step loss for the '{name}' head "
            f"(it has one for: {', '.join(having)}); set diagnose=false")
