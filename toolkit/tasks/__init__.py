"""Task heads (LightningModules), one per head family, and the named tasks built on them."""

from toolkit.tasks.classification import ClassificationTask
from toolkit.tasks.lm import LanguageModelTask
from toolkit.tasks.seq2seq import Seq2SeqTask
from toolkit.tasks.series import SeriesTask
from toolkit.tasks.tagging import TaggingTask

HEADS = {"tagging": TaggingTask, "classification": ClassificationTask, "language_model": LanguageModelTask,
         "seq2seq": Seq2SeqTask, "series": SeriesTask}
