"""The data module of each task head (``task.head`` -> LightningDataModule class)."""

from toolkit.data.lm import LanguageModelDataModule
from toolkit.data.modules import ClassificationDataModule, TaggingDataModule
from toolkit.data.pairs import PairsDataModule

DATA_MODULES = {"tagging": TaggingDataModule, "classification": ClassificationDataModule,
                "language_model": LanguageModelDataModule, "seq2seq": PairsDataModule}
