"""The GPU check (benchmarks/gpu_check.sh) is sound on a machine without CUDA, and never passes for a GPU check there.

Where there is no GPU, the script must say so in one line, check itself (the dry run:
every step on the CPU at tiny size) and exit 0; the ``cuda`` tests must be skipped with
a reason that says there is no CUDA, or fail when the script asks for CUDA. The GPU
section of docs/performance.md must survive a CPU rerun of the suite and be replaced,
not duplicated, by a GPU rerun.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cmd

sys.path.insert(0, str(REPO))  # `benchmarks` is a top-level folder of the repo, not an installed package

from benchmarks import gpu, kernels, run  # noqa: E402
from benchmarks.report import GPU_END, GPU_START, Row, marked_block, replace_marked  # noqa: E402

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
NO_GPU = {"CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # no GPU even on a machine that has one


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_without_cuda_the_script_says_so_in_one_line_dry_runs_and_exits_0(tmp_path):
    before = digest(REPO / "docs" / "performance.md")
    r = run_cmd(["bash", str(SCRIPT)], cwd=tmp_path, env={**NO_GPU, "OUT": str(tmp_path)}, timeout=900)
    assert r.returncode == 0, r.explain()
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("no CUDA on this machine (torch ") and "nothing measured" in lines[0], r.explain()
    assert lines[-1].startswith("dry run passed in "), r.explain()
    log = (tmp_path / "dry-run.log").read_text()
    for step in ("script", "install-check", "cuda-tests-on-cpu", "benchmarks-on-cpu"):
        assert re.search(rf"^  {step}: ok \(", log, re.M), log
    # the dry run writes its GPU section into a copy, never into the real report
    assert digest(REPO / "docs" / "performance.md") == before
    copy = (tmp_path / "performance.md").read_text()
    assert copy.count(GPU_START) == 1 and "**dry run**" in marked_block(copy)


def test_the_script_is_valid_bash_and_refuses_an_unknown_option(tmp_path):
    assert run_cmd(["bash", "-n", str(SCRIPT)]).returncode == 0
    r = run_cmd(["bash", str(SCRIPT), "--measure-everything"], cwd=tmp_path, env=NO_GPU)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: unknown option '--measure-everything'; use --dry-run, --prepare or nothing")
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_python_without_torch_is_named_in_one_line(tmp_path):
    r = run_cmd(["bash", str(SCRIPT)], cwd=tmp_path, env={"PYTHON": "/bin/false", "OUT": str(tmp_path)})
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: /bin/false cannot import torch") and len(r.stderr.splitlines()) == 1


@pytest.mark.slow  # a pytest run inside the test
def test_without_cuda_the_cuda_tests_skip_saying_why_and_fail_when_cuda_is_required(tmp_path):
    args = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
            str(REPO / "tests" / "test_cuda.py")]
    skipped = run_cmd(args, cwd=REPO, env={"CUDA_VISIBLE_DEVICES": ""})
    assert skipped.returncode == 0, skipped.explain()
    assert re.search(r"^\d+ skipped in ", skipped.stdout, re.M) and "passed" not in skipped.stdout, skipped.explain()
    assert "SKIPPED" in skipped.stdout and "no CUDA device on this machine" in skipped.stdout
    required = run_cmd([*args, "-x"], cwd=REPO, env={"CUDA_VISIBLE_DEVICES": "", "RTK_REQUIRE_CUDA": "1"})
    assert required.returncode == 1, required.explain()
    assert "RTK_REQUIRE_CUDA=1, but no CUDA device on this machine" in required.stdout


@pytest.mark.slow  # a pytest run inside the test
def test_every_cuda_test_lives_in_test_cuda_so_the_script_runs_them_all():
    """The script runs `pytest -m cuda tests/test_cuda.py` (other test files import packages a GPU
    machine may lack); a cuda-marked test elsewhere would never run there."""
    r = run_cmd([sys.executable, "-m", "pytest", "-m", "cuda", "--collect-only", "-q", "-p", "no:cacheprovider"],
                cwd=REPO)
    assert r.returncode == 0, r.explain()
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert len(ids) > 30 and all(i.startswith("tests/test_cuda.py::") for i in ids), r.stdout[-3000:]
    assert "cuda: needs a CUDA device" in run_cmd([sys.executable, "-m", "pytest", "--markers"], cwd=REPO).stdout


# ------------------------------------------------------------- the GPU suite and its report
def test_the_gpu_suite_runs_every_kernel_section_on_the_cpu_at_tiny_size(monkeypatch):
    monkeypatch.setattr(gpu, "TASKS", ())  # the trainings are the dry run's (slow test above)
    rows, failed = gpu.run_gpu(gpu.QUICK, "cpu", log=lambda _: None)
    assert failed == []
    sections = {r.section for r in rows}
    assert sections == {"numerics", "layer overhead", "custom cells", "long sequences"}
    # cell x direction x depth x (fixed, variable, variable output only) x (fwd+bwd, inference)
    assert len([r for r in rows if r.section == "layer overhead"]) == 72
    numerics = [r for r in rows if r.section == "numerics"]
    assert len(numerics) == 6 and all(r.status == "met" for r in numerics)  # fp32 on the CPU: within 1e-5
    assert all("peak" not in r.measured for r in rows)  # no CUDA in use: no CUDA memory to report


def test_a_failing_section_is_named_the_others_still_measure_and_the_exit_code_is_1(monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\nmore lines")

    monkeypatch.setattr(kernels, "custom_cells", broken)
    monkeypatch.setattr(gpu, "TASKS", ())
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\nthe CPU part\n")
    assert gpu.main(quick=True, out=out, command="python -m benchmarks --gpu --quick") == 1
    text = out.read_text()
    assert "the CPU part" in text
    assert "- custom cells: RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\n" in text
    assert "### GPU: layer overhead" in text and "### GPU: long sequences" in text
    assert "failed: custom cells: RuntimeError" in capsys.readouterr().out


def test_the_gpu_block_is_replaced_by_a_rerun_and_kept_by_a_cpu_run(tmp_path):
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\nCPU table\n")
    once = replace_marked(out.read_text(), "## GPU\n\nfirst")
    twice = replace_marked(once, "## GPU\n\nsecond")
    assert twice.count(GPU_START) == 1 and twice.count(GPU_END) == 1
    assert "second" in twice and "first" not in twice and twice.startswith("# Performance\n\nCPU table\n")
    out.write_text(twice)
    rows = [Row("layer overhead", "lstm uni L1 fixed, fwd+bwd", "1.0 ms vs 1.0 ms", 1.0, target=("<=", 1.05))]
    run.write(rows, out, "python -m benchmarks", "settings")  # a CPU rerun of the suite
    text = out.read_text()
    assert marked_block(text) == marked_block(twice) and "lstm uni L1 fixed" in text


def test_the_gpu_section_reports_the_cuda_test_counts(tmp_path):
    junit = tmp_path / "cuda-tests.xml"
    junit.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" '
                     'skipped="2" tests="40" time="71.5"></testsuite></testsuites>')
    assert gpu.cuda_tests(junit) == "37 passed, 1 failed, 2 skipped in 72 s"
    text = gpu.section([], [], "cpu", "cmd", "settings", gpu.cuda_tests(junit))
    assert "**37 passed, 1 failed, 2 skipped in 72 s**" in text


def test_docs_performance_has_one_gpu_block_that_names_the_script():
    text = (REPO / "docs" / "performance.md").read_text()
    assert text.count(GPU_START) == 1 and text.count(GPU_END) == 1
    assert "bash benchmarks/gpu_check.sh" in marked_block(text)


@pytest.mark.slow  # six short trainings
def test_a_training_setting_that_fails_is_named_and_the_other_settings_still_measure(monkeypatch):
    """bf16-mixed failing on some GPU must not cost the float32 and CPU figures of the same task."""
    from benchmarks import pipeline

    epoch = pipeline.lightning_epoch

    def no_bf16(cfg, *args, **kwargs):
        if cfg.trainer.precision == "bf16-mixed":
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")
        return epoch(cfg, *args, **kwargs)

    monkeypatch.setattr(pipeline, "lightning_epoch", no_bf16)
    failed: list[str] = []
    rows = gpu.training("ner", gpu.QUICK, "cpu", failed)
    assert failed == ["training ner: trainer=gpu, precision bf16-mixed: RuntimeError: cuDNN error: "
                      "CUDNN_STATUS_NOT_SUPPORTED"]
    assert [r.case.split(" (")[0] for r in rows] == ["ner: trainer=cpu, precision 32-true",
                                                     "ner: trainer=gpu, precision 32-true"]
    assert rows[0].value == 1.0 and "tok/s" in rows[1].measured
