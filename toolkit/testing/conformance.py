"""The checks behind the conformance kit: each takes a registered cell name and its hparams.

Every check builds its cells through the registry (``build_cell`` / ``Recurrent``),
exactly as ``rtk train`` does, so a cell that passes here works in the toolkit.
Sizes are tiny and the numbers float64 (float32 only where dtype is the point),
so the whole kit runs in about a second per cell on a CPU. Each check runs inside
``torch.random.fork_rng`` and leaves the caller's random state as it was.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from toolkit.cells import RecurrentCell, build_cell, cell_hparams
from toolkit.layers import BACKENDS, Recurrent

I, H, B, T = 3, 4, 3, 5  # input features, hidden features, batch, padded length
LENGTHS = torch.tensor([5, 2, 4])  # one full, one short, one in between: both ends of the padding
TOL = 1e-5  # the contract's tolerance between backends (DESIGN.md)
F64 = torch.float64

Hparams = Mapping[str, Any]


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _close(actual: Tensor, expected: Tensor, what: str, tol: float = TOL) -> None:
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not torch.allclose(actual, expected, atol=tol, rtol=tol, equal_nan=False):
        diff = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: differs by up to {diff:.3g} (tolerance {tol:g})")


def _shape(t: Any, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(t, Tensor):
        raise AssertionError(f"{what}: expected a tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise AssertionError(f"{what}: shape {tuple(t.shape)}, expected {shape}")


def _state_tuple(state: Any, cell: RecurrentCell, shape: tuple[int, ...], what: str) -> None:
    names = tuple(cell.state_names)
    if not isinstance(state, (tuple, list)) or len(state) != len(names):
        raise AssertionError(f"{what}: expected a tuple of {len(names)} tensor(s) {names}, got {type(state).__name__}"
                             + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
    for name, s in zip(names, state):
        _shape(s, shape, f"{what} '{name}'")


def _randn(*shape: int, dtype: torch.dtype = F64, device: str = "cpu", seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


def _layer(name: str, hparams: Hparams, backend: str, *, bidirectional: bool = True, num_layers: int = 2,
           dtype: torch.dtype = F64, seed: int = 0) -> Recurrent:
    torch.manual_seed(seed)
    layer = Recurrent(name, I, H, num_layers=num_layers, bidirectional=bidirectional, backend=backend,
                      **hparams)
    return layer.to(dtype).eval()


def _layer_inputs(layer: Recurrent, dtype: torch.dtype = F64, device: str = "cpu") -> tuple[Tensor, tuple[Tensor, ...]]:
    x = _randn(B, T, I, dtype=dtype, device=device, seed=1)  # (B, T, I); padded steps hold noise, not zeros
    LD = layer.num_layers * layer.num_directions
    state = tuple(_randn(LD, B, H, dtype=dtype, device=device, seed=2 + k) for k in range(len(layer.state_names)))
    return x, state


def _backends(name: str, hparams: Hparams) -> list[str]:
    return build_cell(name, I, H, **hparams).backends()


def _run_with_grads(layer: Recurrent, x: Tensor, state: tuple[Tensor, ...],
                    lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor | None]]:
    """Outputs, final state, and the gradients of a random projection of both (None: no gradient)."""
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    y, final = layer(x, lengths=lengths, state=state)
    loss = (y * _randn(*y.shape, dtype=y.dtype, seed=10)).sum()
    loss = loss + sum((f * _randn(*f.shape, dtype=f.dtype, seed=11 + k)).sum() for k, f in enumerate(final))
    names, params = zip(*layer.named_parameters())
    inputs = [x, *state, *params]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    keys = ["x", *(f"initial state '{n}'" for n in layer.state_names), *names]
    return y, tuple(final), dict(zip(keys, grads))


# ------------------------------------------------------------------------ checks
def check_shapes(name: str, hparams: Hparams) -> None:
    """A step maps (B, I) and a state of (B, H) tensors to (B, H); the layer gives (B, T, H * D)."""
    cell = build_cell(name, I, H, **hparams).to(F64)
    if not isinstance(cell, RecurrentCell):
        raise AssertionError(f"build_cell('{name}') returned {type(cell).__name__}, not a RecurrentCell")
    names = cell.state_names
    if not (isinstance(names, tuple) and names and all(isinstance(n, str) for n in names)):
        raise AssertionError(f"state_names must be a non-empty tuple of str, got {names!r}")
    s0 = cell.initial_state(B, dtype=F64)
    _state_tuple(s0, cell, (B, H), "initial_state(B)")
    state = tuple(_randn(B, H, seed=k) for k in range(len(names)))
    y, new = cell(_randn(B, I), state)
    _shape(y, (B, H), "forward(x_t, state) output y_t")
    _state_tuple(new, cell, (B, H), "forward(x_t, state) new state")
    backends = cell.backends()
    if not backends or backends[-1] != "loop" or not set(backends) <= set(BACKENDS) - {"auto"}:
        raise AssertionError(f"backends() must list known backends ending in 'loop', got {backends}")
    if "sequence" in backends:
        for lengths in (None, LENGTHS):
            y, final = cell.forward_sequence(_randn(B, T, I), state, lengths)
            _shape(y, (B, T, H), f"forward_sequence(x, state, lengths={lengths}) output y")
            _state_tuple(final, cell, (B, H), f"forward_sequence(x, state, lengths={lengths}) final state")
    for backend in backends:
        layer = _layer(name, hparams, backend)
        x, s = _layer_inputs(layer)
        y, final = layer(x, lengths=LENGTHS, state=s)
        _shape(y, (B, T, 2 * H), f"Recurrent(num_layers=2, bidirectional, backend={backend}) output")
        _state_tuple(final, cell, (4, B, H), f"Recurrent(num_layers=2, bidirectional, backend={backend}) final state")


def check_dtype_and_device(name: str, hparams: Hparams) -> None:
    """Outputs and states come out in the dtype (float32, float64) and on the device of the input."""
    for device, dtype in itertools.product(_devices(), (torch.float32, torch.float64)):
        where = f"{dtype} on {device}"
        cell = build_cell(name, I, H, **hparams).to(device=device, dtype=dtype)
        s0 = cell.initial_state(B, device=device, dtype=dtype)
        y, new = cell(_randn(B, I, dtype=dtype, device=device), s0)
        for what, t in [("initial_state", s) for s in s0] + [("step output", y)] + [("step state", s) for s in new]:
            if t.dtype != dtype or t.device.type != device:
                raise AssertionError(f"{what} is {t.dtype} on {t.device}, expected {where}")
        for backend in cell.backends():
            layer = _layer(name, hparams, backend, dtype=dtype).to(device)
            x, s = _layer_inputs(layer, dtype=dtype, device=device)
            y, final = layer(x, lengths=LENGTHS.to(device), state=s)
            for what, t in [("output", y)] + [("final state", f) for f in final]:
                if t.dtype != dtype or t.device.type != device:
                    raise AssertionError(f"Recurrent backend={backend} {what} is {t.dtype} on {t.device}, "
                                         f"expected {where}")


def check_padding_invariance(name: str, hparams: Hparams, bidirectional: bool) -> None:
    """Each sequence of a padded batch gets the outputs and final state it gets alone; padding outputs are 0."""
    direction = "bidirectional" if bidirectional else "unidirectional"
    for backend in _backends(name, hparams):
        layer = _layer(name, hparams, backend, bidirectional=bidirectional)
        x, state = _layer_inputs(layer)
        with torch.no_grad():
            y, final = layer(x, lengths=LENGTHS, state=state)
            for i, n in enumerate(LENGTHS.tolist()):
                where = f"backend={backend}, {direction}, sequence {i} (length {n} of {T})"
                if n < T and not torch.all(y[i, n:] == 0):
                    raise AssertionError(f"{where}: outputs at padded steps are not exactly zero")
                alone_y, alone_final = layer(x[i:i + 1, :n], state=tuple(s[:, i:i + 1] for s in state))
                _close(y[i, :n], alone_y[0], f"{where}: outputs differ from running it alone")
                for k, state_name in enumerate(layer.state_names):
                    _close(final[k][:, i], alone_final[k][:, 0],
                           f"{where}: final state '{state_name}' differs from running it alone")


def check_gradients_reach_every_parameter(name: str, hparams: Hparams) -> None:
    """A loss on the outputs and final state gives every parameter a finite, non-zero gradient."""
    for backend in _backends(name, hparams):
        layer = _layer(name, hparams, backend)
        x, state = _layer_inputs(layer)
        _, _, grads = _run_with_grads(layer, x, state, LENGTHS)
        for what, g in grads.items():
            where = f"backend={backend}: {what}"
            if g is None:
                raise AssertionError(f"{where} gets no gradient (is it used in forward?)")
            if not torch.isfinite(g).all():
                raise AssertionError(f"{where} has a non-finite gradient")
            if not g.abs().sum() > 0:
                raise AssertionError(f"{where} has an all-zero gradient")


class _Sequence(nn.Module):
    """forward_sequence as a module's forward, so torch.func.functional_call can swap its parameters."""

    def __init__(self, cell: RecurrentCell) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, state: tuple[Tensor, ...], lengths: Tensor | None):
        return self.cell.forward_sequence(x, state, lengths)


def check_gradcheck(name: str, hparams: Hparams) -> None:
    """torch.autograd.gradcheck in float64 over three steps, w.r.t. input, initial state and every parameter."""
    i, h, b, t = 2, 2, 2, 3
    torch.manual_seed(0)
    cell = build_cell(name, i, h, **hparams).to(F64)
    n_state = len(cell.state_names)
    names, params = zip(*[(k, p.detach().clone().requires_grad_()) for k, p in cell.named_parameters()])
    x = _randn(b, t, i, seed=1).requires_grad_()
    state = tuple(_randn(b, h, seed=2 + k).requires_grad_() for k in range(n_state))

    def steps(x: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        s, p = args[:n_state], dict(zip(names, args[n_state:]))
        outs = []
        for step in range(t):
            y, s = functional_call(cell, p, (x[:, step], tuple(s)))
            outs.append(y)
        return (torch.stack(outs, dim=1), *s)

    runs: list[tuple[str, Callable[..., Any], tuple[str, ...]]] = [("forward (3 steps)", steps, names)]
    if "sequence" in cell.backends():
        seq = _Sequence(cell)
        seq_names = tuple(f"cell.{k}" for k in names)
        lengths = torch.tensor([t, t - 1])

        def whole(x: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
            s, p = args[:n_state], dict(zip(seq_names, args[n_state:]))
            y, final = functional_call(seq, p, (x, tuple(s), lengths))
            return (y, *final)

        runs.append(("forward_sequence", whole, seq_names))
    for what, fn, _ in runs:
        try:
            torch.autograd.gradcheck(fn, (x, *state, *params), eps=1e-6, atol=1e-5, rtol=1e-4)
        except Exception as exc:  # gradcheck raises GradcheckError with the Jacobians in its message
            raise AssertionError(f"gradcheck of {what} failed: {str(exc)[:600]}") from exc


def check_deterministic_under_seed(name: str, hparams: Hparams) -> None:
    """The same seed builds identical parameters, and the same input gives identical outputs."""
    backend = _backends(name, hparams)[0]
    a = _layer(name, hparams, backend, seed=1234)
    b = _layer(name, hparams, backend, seed=1234)
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        raise AssertionError(f"two builds have different state_dict keys: {list(sa)} vs {list(sb)}")
    for key in sa:
        if not torch.equal(sa[key], sb[key]):
            raise AssertionError(f"parameter {key} differs between two builds under torch.manual_seed(1234); "
                                 "initialise from torch's global RNG (e.g. reset_parameters())")
    x, state = _layer_inputs(a)
    with torch.no_grad():
        ya, fa = a(x, lengths=LENGTHS, state=state)
        yb, fb = b(x, lengths=LENGTHS, state=state)
        y2, _ = a(x, lengths=LENGTHS, state=state)
    if not (torch.equal(ya, yb) and all(torch.equal(p, q) for p, q in zip(fa, fb))):
        raise AssertionError(f"backend={backend}: two identically seeded builds give different outputs")
    if not torch.equal(ya, y2):
        raise AssertionError(f"backend={backend}: the same layer gives different outputs on the same input in eval mode")


def check_state_dict_round_trip(name: str, hparams: Hparams) -> None:
    """A state_dict saved with torch.save loads (strict) into a fresh cell, which then computes the same."""
    torch.manual_seed(0)
    src = build_cell(name, I, H, **hparams).to(F64)
    torch.manual_seed(1)
    dst = build_cell(name, I, H, **hparams).to(F64)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    dst.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    state = tuple(_randn(B, H, seed=k) for k in range(len(src.state_names)))
    x_t = _randn(B, I, seed=5)
    with torch.no_grad():
        y_src, s_src = src(x_t, state)
        y_dst, s_dst = dst(x_t, state)
    if not (torch.equal(y_src, y_dst) and all(torch.equal(p, q) for p, q in zip(s_src, s_dst))):
        raise AssertionError("a fresh cell loaded with the state_dict computes different numbers")


def check_backends_agree_with_loop(name: str, hparams: Hparams) -> None:
    """Every backend the cell offers matches loop within 1e-5: outputs, final state and every gradient."""
    backends = _backends(name, hparams)
    auto = _layer(name, hparams, "auto", num_layers=1, bidirectional=False).backend
    if auto != backends[0]:
        raise AssertionError(f"backend=auto picked {auto!r}, but the cell's fastest backend is {backends[0]!r}")
    loop = _layer(name, hparams, "loop")
    for backend, lengths in itertools.product(backends[:-1], (None, LENGTHS)):
        other = _layer(name, hparams, backend, seed=99)
        other.load_state_dict(loop.state_dict())  # the same weights load whatever the backend
        x, state = _layer_inputs(loop)
        y_l, f_l, g_l = _run_with_grads(loop, x, state, lengths)
        y_o, f_o, g_o = _run_with_grads(other, x, state, lengths)
        where = f"backend={backend} vs loop ({'padded' if lengths is not None else 'full length'}, 2 layers, bidirectional)"
        _close(y_o, y_l, f"{where}: outputs")
        for k, state_name in enumerate(loop.state_names):
            _close(f_o[k], f_l[k], f"{where}: final state '{state_name}'")
        for key, g in g_l.items():
            if (g is None) != (g_o[key] is None):
                raise AssertionError(f"{where}: gradient of {key} exists in one backend only")
            if g is not None:
                _close(g_o[key], g, f"{where}: gradient of {key}")


def _hydra_value(value: Any) -> str:
    """A Python value written in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    raise AssertionError(f"hparam value {value!r} cannot be written as a Hydra override")


def check_hydra_config_composes(name: str, hparams: Hparams) -> None:
    """``rtk train cell=<name>`` composes (with the hparams as overrides), validates and builds the layer."""
    # here, not at the top: only this check needs Hydra and the whole toolkit (heads, Lightning); a plugin's
    # other checks run on torch alone
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from toolkit.config import register_plugin_cells, validate

    register_plugin_cells()
    overrides = [f"cell={name}"] + [f"++cell.{k}={_hydra_value(v)}" for k, v in hparams.items()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    except Exception as exc:
        raise AssertionError(f"hydra could not compose train with {overrides}: {type(exc).__name__}: {exc}") from exc
    finally:
        GlobalHydra.instance().clear()
    cell_cfg = OmegaConf.to_container(cfg.cell, resolve=True)
    if cell_cfg.get("name") != name:
        raise AssertionError(f"cell={name} composed cell.name={cell_cfg.get('name')!r}")
    got = cell_hparams(cell_cfg)
    for k, v in hparams.items():
        if got.get(k) != (list(v) if isinstance(v, tuple) else v):
            raise AssertionError(f"cell.{k} composed as {got.get(k)!r}, expected {v!r}")
    validate(cfg)  # what rtk train checks before building anything; raises ConfigError with the reason
    layer = Recurrent(name, I, H, backend=cell_cfg.get("backend", "auto"), **got)
    layer(_randn(B, T, I, dtype=torch.float32), lengths=LENGTHS)


# Ordered: cheap structural checks first, so the first failure is the most basic one.
CHECKS: dict[str, Callable[[str, Hparams], None]] = {
    "shapes": check_shapes,
    "dtype_and_device": check_dtype_and_device,
    "padding_invariance_uni": lambda n, h: check_padding_invariance(n, h, bidirectional=False),
    "padding_invariance_bi": lambda n, h: check_padding_invariance(n, h, bidirectional=True),
    "gradients_reach_every_parameter": check_gradients_reach_every_parameter,
    "gradcheck": check_gradcheck,
    "deterministic_under_seed": check_deterministic_under_seed,
    "state_dict_round_trip": check_state_dict_round_trip,
    "backends_agree_with_loop": check_backends_agree_with_loop,
    "hydra_config_composes": check_hydra_config_composes,
}


def run_check(check: str, name: str, hparams: Hparams | None = None) -> None:
    """Run one named check; an AssertionError names the cell and the check."""
    hparams = dict(hparams or {})
    label = name + (f" {hparams}" if hparams else "")
    # One intra-op thread: at these sizes threads only add overhead, and on a busy 2-core
    # machine they made gradcheck of layernorm_lstm take 30 s instead of 0.3 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            CHECKS[check](name, hparams)
    except AssertionError as exc:
        raise AssertionError(f"cell '{label}' failed check '{check}': {exc}") from exc
    except Exception as exc:  # a crash inside the cell is a failed check too, named the same way
        raise AssertionError(f"cell '{label}' failed check '{check}': {type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(threads)


def check_cell(name: str, **hparams: Any) -> None:
    """Run every check on the registered cell ``name`` built with ``hparams``.

    Raises one AssertionError naming every failed check and why; returns None when
    the cell conforms. For runners other than pytest (unittest, a script, CI).
    """
    failures = []
    for check in CHECKS:
        try:
            run_check(check, name, hparams)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} of {len(CHECKS)} conformance checks failed:\n" + "\n".join(failures))
