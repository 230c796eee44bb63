"""Conformance kit: test a recurrent cell against the toolkit's contract in one line.

With pytest, subclass :class:`CellConformance` (the class name must start with
``Test`` so pytest collects it)::

    from toolkit.testing import CellConformance

    class TestMyCell(CellConformance):
        cell = "my_cell"            # the name registered under toolkit.cells
        hparams = {"scale": 0.5}    # optional: keyword hparams of the cell

With any other runner, call :func:`check_cell`; it raises one AssertionError
naming every failed check::

    from toolkit.testing import check_cell
    check_cell("my_cell", scale=0.5)

The checks (see :mod:`toolkit.testing.conformance` for each one's exact terms):
shapes; dtype and device follow the input (float32, float64; CUDA when there is
one); padding invariance through :class:`toolkit.layers.Recurrent`, uni- and
bidirectional; gradients reach every parameter; ``torch.autograd.gradcheck`` in
float64; deterministic under a seed; state_dict round-trip; every backend the
cell offers agrees with ``loop`` within 1e-5 (outputs, final state, gradients);
``cell=<name>`` composes in Hydra and validates.
"""

from __future__ import annotations

from typing import Any, ClassVar

from toolkit.testing.conformance import CHECKS, check_cell, run_check

__all__ = ["CHECKS", "CellConformance", "check_cell", "run_check"]


class CellConformance:
    """A pytest base class: one test per conformance check, for the cell named in ``cell``."""

    cell: ClassVar[str] = ""
    hparams: ClassVar[dict[str, Any]] = {}

    def _check(self, check: str) -> None:
        if not self.cell:
            raise AssertionError(f"{type(self).__name__}: set the class attribute cell = '<registered cell name>'")
        run_check(check, self.cell, self.hparams)

    def test_shapes(self) -> None:
        self._check("shapes")

    def test_dtype_and_device(self) -> None:
        self._check("dtype_and_device")

    def test_padding_invariance_uni(self) -> None:
        self._check("padding_invariance_uni")

    def test_padding_invariance_bi(self) -> None:
        self._check("padding_invariance_bi")

    def test_gradients_reach_every_parameter(self) -> None:
        self._check("gradients_reach_every_parameter")

    def test_gradcheck(self) -> None:
        self._check("gradcheck")

    def test_deterministic_under_seed(self) -> None:
        self._check("deterministic_under_seed")

    def test_state_dict_round_trip(self) -> None:
        self._check("state_dict_round_trip")

    def test_backends_agree_with_loop(self) -> None:
        self._check("backends_agree_with_loop")

    def test_hydra_config_composes(self) -> None:
        self._check("hydra_config_composes")
