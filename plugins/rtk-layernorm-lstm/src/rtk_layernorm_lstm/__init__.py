"""Layer-normalised LSTM for Recurrent Toolkit: registered as the cell ``layernorm_lstm``."""

from rtk_layernorm_lstm.cell import LayerNormLSTMCell

__all__ = ["LayerNormLSTMCell"]
__version__ = "0.1.0"
