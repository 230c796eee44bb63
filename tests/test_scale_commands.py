"""Every training command of docs/scale.md composes, its process counts agree, and the torchrun path runs.

No GPU, several nodes or SLURM here: what can be checked is that each documented
command composes into a valid config (a sweep one job at a time), that the numbers
a launcher and Lightning must agree on do agree, and that torchrun drives the same
DDP code path on CPU (trainer=ddp_cpu).
"""

from __future__ import annotations

import itertools
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, run_cmd
from toolkit.config import validate

DOC = REPO / "docs" / "scale.md"


def documented() -> list[tuple[str, dict[str, str], list[str]]]:
    """(command line, its torchrun / #SBATCH options, its Hydra overrides) for each training command."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S):
        sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", block, re.M))
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            m = re.search(r"(?:\brtk train|-m toolkit\.train)\s+(.*)", line)
            if m is None:
                continue
            launcher = dict(re.findall(r"--([\w-]+)=(\S+)", line[:m.start()])) or sbatch
            found.append((line, launcher, [a for a in shlex.split(m.group(1)) if a != "-m"]))
    return found


COMMANDS = documented()


def jobs(overrides: list[str]) -> list[list[str]]:
    """A multirun's jobs: every combination of the comma-separated values (hydra.* keys are not swept)."""
    choices = [[o] if o.startswith("hydra") or "," not in o else
               [f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in overrides]
    return [list(job) for job in itertools.product(*choices)]


def test_the_page_documents_ddp_torchrun_and_slurm():
    lines = [line for line, _, _ in COMMANDS]
    assert any("trainer=ddp " in f"{line} " for line in lines)
    assert any(line.startswith("torchrun ") for line in lines)
    assert any("hydra/launcher=slurm" in line for line in lines)
    assert any(line.startswith("srun ") for line in lines)


@pytest.mark.parametrize(("line", "launcher", "overrides"), COMMANDS, ids=[c[0][:60] for c in COMMANDS])
def test_every_documented_training_command_composes(compose, line, launcher, overrides):
    for job in jobs(overrides):
        cfg = compose(job)
        validate(cfg)
        t = cfg.trainer
        if "nproc-per-node" in launcher:  # torchrun: Lightning takes the processes torchrun started
            assert (t.devices, t.num_nodes) == (int(launcher["nproc-per-node"]), int(launcher.get("nnodes", 1))), line
        if "ntasks-per-node" in launcher:  # srun: one task per device
            assert (t.devices, t.num_nodes) == (int(launcher["ntasks-per-node"]), int(launcher["nodes"])), line
        if "hydra/launcher=slurm" in job:
            lc = cfg.hydra.launcher
            assert lc._target_.endswith("SlurmLauncher")
            assert (lc.tasks_per_node, lc.nodes) == (t.devices, t.num_nodes), line
            assert lc.gpus_per_node == t.devices, line
        if "trainer=ddp" in job:
            assert (t.accelerator, t.strategy) == ("gpu", "ddp")


@pytest.mark.slow
def test_torchrun_runs_the_ddp_code_path_on_cpu(tmp_path):
    """What docs/scale.md says is tested: torchrun --nnodes=1 --nproc-per-node=2 -m toolkit.train trainer=ddp_cpu."""
    torchrun = Path(sys.executable).parent / "torchrun"
    start = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    run = tmp_path / "run"
    r = run_cmd([*start, "--nnodes=1", "--nproc-per-node=2", "-m", "toolkit.train", "trainer=ddp_cpu",
                 "task=peptides", *TINY, f"hydra.run.dir={run}"], cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.explain()
    out = r.stdout + r.stderr
    assert "MEMBER: 2/2" in out, r.explain()  # both ranks joined one process group
    assert r.stdout.count("Recurrent Toolkit · peptides") == 1, "the summary must be printed once, by rank 0"
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "results.json").is_file()
