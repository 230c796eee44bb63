"""The GPU path: every backend of every cell on CUDA, and a CUDA-trained checkpoint on the CPU.

Run with ``pytest -m cuda`` on a machine with CUDA (``benchmarks/gpu_check.sh`` does, in
its one-go GPU check). Without CUDA every test here is *skipped*, with a reason that says
so: nothing here passes unchecked. ``RTK_REQUIRE_CUDA=1`` (the script sets it) turns those
skips into failures, so a CUDA setup that torch cannot see is never counted as checked.
``RTK_CUDA_TESTS_ON_CPU=1`` (the script's dry run) runs this file's own code on the CPU
instead: it checks the tests, not CUDA.

Every test marked ``cuda`` lives in this file; ``tests/test_gpu_check.py`` holds that.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_cmd
from toolkit.cells import available_cells, build_cell
from toolkit.layers import Recurrent
from toolkit.testing import run_check

HAS_CUDA = torch.cuda.is_available()
ON_CPU = os.environ.get("RTK_CUDA_TESTS_ON_CPU") == "1"
NO_CUDA = ("no CUDA device on this machine (torch.cuda.is_available() is False): the cuda tests need a GPU; "
           "benchmarks/gpu_check.sh runs them on one")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not (HAS_CUDA or ON_CPU or os.environ.get("RTK_REQUIRE_CUDA") == "1"), reason=NO_CUDA)]

HERE = Path(__file__).resolve().parent
DEVICE = "cpu" if ON_CPU else "cuda"
TRAIN_ON_GPU = ["trainer=gpu"] + (["trainer.accelerator=cpu"] if ON_CPU else [])
B, T, I, H = 3, 7, 5, 6
LENGTHS = torch.tensor([7, 2, 5])  # one full, one short, one in between
TOL = 1e-5  # the contract between backends (DESIGN.md), here in float32 on the GPU

# Every registered cell (built-ins and the installed plugins), and both forms of the GRU.
CELLS = [(name, {}) for name in available_cells()] + [("gru", {"reset": "before"})]
IDS = [name + "".join(f"-{k}={v}" for k, v in hp.items()) for name, hp in CELLS]


@pytest.fixture(autouse=True)
def cuda_is_there():
    assert HAS_CUDA or ON_CPU, f"RTK_REQUIRE_CUDA=1, but {NO_CUDA}"


@pytest.fixture
def fp32_math():
    """Full float32 in cuDNN and cuBLAS while the test runs: cuDNN allows TF32 by default,
    which rounds the RNN's matmul inputs to 10 mantissa bits, ~1e-3 off, far past 1e-5."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def randn(*shape: int, seed: int, device: str) -> torch.Tensor:
    """The same numbers on every device: drawn on the CPU, then moved."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def layer(name: str, hparams: dict, backend: str, device: str) -> Recurrent:
    """Two layers, bidirectional, no dropout. In train mode: cuDNN's RNN has no backward for a
    forward run in eval mode (torch raises), and without dropout the mode changes no number."""
    torch.manual_seed(0)
    return Recurrent(name, I, H, num_layers=2, bidirectional=True, backend=backend, **hparams).to(device).train()


def run_with_grads(net: Recurrent, lengths: torch.Tensor | None, device: str) -> dict[str, torch.Tensor]:
    """Outputs, final state and the gradient of a random projection of both w.r.t. the input,
    the initial state and every parameter, all on the CPU for comparison."""
    x = randn(B, T, I, seed=1, device=device).requires_grad_()
    state = tuple(randn(4, B, H, seed=2 + k, device=device).requires_grad_() for k in range(len(net.state_names)))
    y, final = net(x, lengths=lengths, state=state)
    loss = (y * randn(*y.shape, seed=10, device=device)).sum()
    loss = loss + sum((f * randn(*f.shape, seed=11 + k, device=device)).sum() for k, f in enumerate(final))
    names, params = zip(*net.named_parameters())
    grads = torch.autograd.grad(loss, [x, *state, *params])
    out = {"output": y, **{f"final state '{n}'": f for n, f in zip(net.state_names, final)}}
    out.update({f"gradient of {k}": g for k, g in zip(["x", *(f"initial '{n}'" for n in net.state_names), *names],
                                                       grads)})
    return {k: v.detach().cpu() for k, v in out.items()}


def assert_close(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys()
    for key in want:
        diff = (got[key] - want[key]).abs().max().item()
        assert torch.allclose(got[key], want[key], atol=TOL, rtol=TOL), f"{where}: {key} differs by {diff:.3g}"


@pytest.mark.parametrize(("name", "hparams"), CELLS, ids=IDS)
def test_every_backend_equals_loop_on_cuda_in_float32(name, hparams, fp32_math):
    """outputs, final states and gradients within 1e-5, padded and full length, 2 layers, bidirectional."""
    backends = build_cell(name, I, H, **hparams).backends()
    loop = layer(name, hparams, "loop", DEVICE)
    for lengths in (None, LENGTHS):
        want = run_with_grads(loop, lengths, DEVICE)
        for backend in backends[:-1]:
            other = layer(name, hparams, backend, DEVICE)
            other.load_state_dict(loop.state_dict())
            got = run_with_grads(other, lengths, DEVICE)
            where = f"{name} backend={backend} vs loop on CUDA ({'padded' if lengths is not None else 'full length'})"
            assert_close(got, want, where)
            if lengths is not None:
                for i, n in enumerate(LENGTHS.tolist()):
                    assert torch.all(got["output"][i, n:] == 0), f"{where}: sequence {i} has output past its end"


@pytest.mark.parametrize(("name", "hparams"), CELLS, ids=IDS)
def test_loop_on_cuda_equals_loop_on_the_cpu(name, hparams, fp32_math):
    """The cell's arithmetic does not depend on the device (float32, padded, bidirectional)."""
    cpu = layer(name, hparams, "loop", device="cpu")
    cuda = layer(name, hparams, "loop", DEVICE)
    cuda.load_state_dict(cpu.state_dict())
    assert_close(run_with_grads(cuda, LENGTHS, DEVICE), run_with_grads(cpu, LENGTHS, "cpu"), f"{name} loop, CUDA vs CPU")


@pytest.mark.parametrize(("name", "hparams"), CELLS, ids=IDS)
def test_dtype_and_device_conformance_includes_cuda(name, hparams):
    """The conformance kit's check, which adds CUDA to the devices when there is one."""
    run_check("dtype_and_device", name, hparams)


@pytest.mark.parametrize(("name", "hparams"), CELLS, ids=IDS)
def test_every_backend_trains_under_bf16_autocast(name, hparams):
    """What trainer.precision=bf16-mixed does to the layer: finite outputs and gradients, near float32."""
    for backend in build_cell(name, I, H, **hparams).backends():
        net = layer(name, hparams, backend, DEVICE)
        want = run_with_grads(net, LENGTHS, DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            got = run_with_grads(net, LENGTHS, DEVICE)
        for key, value in got.items():
            where = f"{name} backend={backend} under bf16 autocast: {key}"
            assert torch.isfinite(value).all(), f"{where} is not finite"
            # The direction, not each entry: a bias gradient sums many terms that cancel, so one
            # entry can be 10 % off in bfloat16 (8 bits of mantissa) while the whole stays right.
            # Seen on the CPU: cosine >= 0.996 for every tensor of every cell.
            cos = torch.nn.functional.cosine_similarity(value.float().flatten(), want[key].flatten(), dim=0)
            assert cos > 0.98, f"{where} points elsewhere than in float32 (cosine {cos:.4f})"


# ------------------------------------------------------------------ checkpoints
SENTENCES = [s.split() for s in (
    "Harry Potter and Hermione Granger invented a new spell .",
    "@user just landed in New York , see you at the Apple store tomorrow",
    "RT Justin Bieber performs live on MTV tonight !!",
    "going to Paris with Mike next week for the Louvre",
    "lol",
)]


def predictions(ckpt: str, device: str, sentences: list[list[str]]) -> dict:
    """Tags and per-token logits of a NER checkpoint for each sentence, computed on ``device``."""
    from toolkit.data.tagging import collate_tagging, encode_tagging
    from toolkit.checkpoints import load_task

    model = load_task(ckpt, expect="tagging").to(device)
    spec = model.hparams.spec  # the ner default reads gazetteers: their flags are inputs too
    out = {"tags": [], "logits": []}
    with torch.no_grad():
        for tokens in sentences:
            out["tags"].append(model.predict_tokens(tokens))
            batch = collate_tagging([encode_tagging(tokens, model.vocab, spec["normalize"], model.chars,
                                                    spec.get("gazetteer"))])
            out["logits"].append(model({k: v.to(device) for k, v in batch.items()})[0].cpu().tolist())
    return out


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_checkpoint_trained_on_cuda_predicts_the_same_on_the_cpu(train_module, tmp_path, precision, fp32_math):
    run_dir = tmp_path / "run"
    r = train_module("task=ner", *TRAIN_ON_GPU, f"trainer.precision={precision}", *TINY, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.explain()
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    on_cuda = predictions(str(ckpt), DEVICE, SENTENCES)
    # A fresh process that cannot see the GPU, as on a laptop after training on a cluster.
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_cuda import predictions; "
            "print(json.dumps(predictions(sys.argv[2], 'cpu', json.loads(sys.argv[3]))))")
    cpu = run_cmd([sys.executable, "-c", code, str(HERE), str(ckpt), json.dumps(SENTENCES)],
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert cpu.returncode == 0, cpu.explain()
    on_cpu = json.loads(cpu.stdout.strip().splitlines()[-1])
    assert on_cpu["tags"] == on_cuda["tags"]
    for s, (a, b) in enumerate(zip(on_cpu["logits"], on_cuda["logits"])):
        diff = (torch.tensor(a) - torch.tensor(b)).abs().max().item()
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=TOL, rtol=TOL), \
            f"sentence {s}: logits on the CPU and on CUDA differ by {diff:.3g}"


def test_trainer_ddp_runs_on_one_gpu(rtk, tmp_path):
    """trainer=ddp through `rtk train` on the one GPU there is: NCCL, the strategy, rank 0's run dir.
    (DDP across GPUs needs a machine with several; docs/scale.md has the commands.)"""
    run_dir = tmp_path / "run"
    ddp = ["trainer=ddp"] + (["trainer.accelerator=cpu", "trainer.devices=1"] if ON_CPU else [])
    r = rtk("train", "task=peptides", *ddp, *TINY, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.explain()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and "Recurrent Toolkit · peptides" in r.stdout
