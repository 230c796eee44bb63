"""task=music end to end: train on the chorales, generate conditioned on a mode, write MIDI that music21 reads back."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, rtk_cmd
from toolkit.data.music import parse_token, read_midi_notes


@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    run_dir = tmp_path_factory.mktemp("music") / "run"
    result = rtk_cmd("train", "task=music", f"hydra.run.dir={run_dir}", *TINY, cwd=cwd)
    assert result.returncode == 0, result.explain()
    return run_dir, cwd


def vocab_of(ckpt) -> list[str]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["spec"]["vocab"]


def test_music_reports_test_nats_per_note_and_conditions_on_the_mode(music_run):
    run_dir, _ = music_run
    summary = (run_dir / "summary.txt").read_text()
    assert "nats_per_token" in summary
    spec = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)[
        "hyper_parameters"]["spec"]
    assert spec["conditions"] == ["<major>", "<minor>"]


def test_generate_writes_a_midi_file_music21_reads_back_note_for_note(music_run, tmp_path):
    run_dir, cwd = music_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    out = tmp_path / "chorale.mid"
    r = rtk_cmd("generate", f"ckpt={ckpt}", "n=1", "prompt=<minor>", "max_len=40", "seed=1", f"out={out}", cwd=cwd)
    assert r.returncode == 0, r.explain()
    tokens = r.stdout.split()
    assert tokens[0] == "<minor>"
    notes = [parse_token(t) for t in tokens[1:]]
    # MIDI keeps nothing after the last sounding note, so trailing rests do not come back
    while notes and notes[-1][0] == "rest":
        notes.pop()
    back = read_midi_notes(out)
    assert len(back) == len(notes) > 0
    assert [p for p, _ in back] == [p for p, _ in notes]
    durations = {parse_token(t)[1] for t in vocab_of(ckpt) if not t.startswith("<")}
    assert all(d in {float(x) for x in durations} for _, d in back)


def test_generate_continues_the_first_few_notes(music_run):
    run_dir, cwd = music_run
    r = rtk_cmd("generate", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "n=2", "prompt=<major> C5_1 D5_1",
                "max_len=5", "seed=0", cwd=cwd)
    assert r.returncode == 0, r.explain()
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.split()[:3] == ["<major>", "C5_1", "D5_1"] for line in lines), r.stdout


def test_several_samples_go_to_numbered_midi_files(music_run, tmp_path):
    run_dir, cwd = music_run
    out = tmp_path / "piece.mid"
    r = rtk_cmd("generate", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "n=2", "max_len=10", "seed=0",
                f"out={out}", cwd=cwd)
    assert r.returncode == 0, r.explain()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piece-1.mid", "piece-2.mid"]
