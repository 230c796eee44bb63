"""A template plugin for Recurrent Toolkit: copy this package, rename it, write your step.

Registered as the cell ``template_rnn`` (see ``[project.entry-points."toolkit.cells"]``
in pyproject.toml).
"""

from rtk_cell_template.cell import TemplateRNNCell

__all__ = ["TemplateRNNCell"]
__version__ = "0.1.0"
