"""Task heads (LightningModules), one per head family, and the named tasks built on them."""

from toolkit.tasks.classification import ClassificationTask
from toolkit.tasks.tagging import TaggingTask

HEADS = {"tagging": TaggingTask, "classification": ClassificationTask}
