"""The data module of each task head (``task.head`` -> LightningDataModule class)."""

from toolkit.data.lm import LanguageModelDataModule
from toolkit.data.modules import ClassificationDataModule, TaggingDataModule
from toolkit.data.pairs import PairsDataModule
from toolkit.data.series import SeriesDataModule

DATA_MODULES = {"tagging": TaggingDataModule, "classification": ClassificationDataModule,
                "language_model": LanguageModelDataModule, "seq2seq": PairsDataModule,
                "series": SeriesDataModule}
