"""rtk export: onnxruntime equals torch (1e-4) on batches and lengths unlike the export example."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from toolkit.api import wrap
from toolkit.cli import main
from toolkit.export import ExportNet, example_inputs, export, reference, run_exported

from test_api import classification_task, lm_task, save, seq2seq_task, tagging_task

ort = pytest.importorskip("onnxruntime", reason='the export extra: pip install "recurrent-toolkit[export]"')

CELLS = [("rnn", {}), ("gru_simple", {}), ("gru", {}), ("gru", {"reset": "before"}), ("lstm", {}),
         ("peephole_lstm", {}), ("mingru", {}), ("layernorm_lstm", {})]
IDS = [c + ("-" + "-".join(f"{k}={v}" for k, v in h.items()) if h else "") for c, h in CELLS]


def assert_export_matches_torch(model, path, fmt="onnx"):
    net = ExportNet(model)
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == net.input_names + net.state_names
        assert [o.name for o in session.get_outputs()] == net.output_names
    for batch, length, seed, width in ((3, 9, 1, 7), (1, 2, 2, 1), (4, 1, 3, 2)):  # the export example: (2, 5, 4)
        inputs = example_inputs(net, batch, length, seed, width)
        got = run_exported(path, fmt, inputs)
        for g, e in zip(got, reference(model, inputs), strict=True):
            np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=0)


# Every cell at the simplest shape and at the one that stacks and reverses (depth 2, bi); the other
# two shapes only for the LSTM: toolkit.layers.Recurrent stacks and reverses every cell alike.
# (The full 8 x 2 x 2 grid cost about 170 s of the suite for 14 more cases.)
SHAPES = [pytest.param(cell, hp, depth, direction, id=f"{name}-{depth}-{direction}")
          for (cell, hp), name in zip(CELLS, IDS) for depth, direction in ((1, "uni"), (2, "bi"))]
SHAPES += [pytest.param("lstm", {}, 1, "bi", id="lstm-1-bi"), pytest.param("lstm", {}, 2, "uni", id="lstm-2-uni")]


@pytest.mark.slow
@pytest.mark.parametrize("cell,hp,depth,direction", SHAPES)
def test_every_cell_exports_to_onnx_with_dynamic_batch_and_length(tmp_path, cell, hp, direction, depth):
    torch.manual_seed(0)
    model = wrap(classification_task(cell=cell, depth=depth, direction=direction, cell_hp=hp).eval())
    path, _, _ = export(model, tmp_path / "m.onnx")
    assert_export_matches_torch(model, path)


@pytest.mark.slow
def test_a_bidirectional_two_layer_tagger_and_a_language_model_export(tmp_path):
    torch.manual_seed(0)
    tagger = wrap(tagging_task(cell="lstm", depth=2, direction="bi", decode="crf"))
    path, side, _ = export(tagger, tmp_path / "tagger.onnx")
    assert_export_matches_torch(tagger, path)
    meta = json.loads(side.read_text())
    assert meta["labels"] == tagger.labels and meta["vocab"][:2] == ["<pad>", "<unk>"]
    assert meta["state"]["names"] == ["h", "c"] and meta["state"]["num_directions"] == 2
    assert meta["inputs"] == ["tokens", "shapes", "chars", "lengths", "state_h", "state_c"]
    assert meta["outputs"] == ["logits", "final_h", "final_c"]

    lm = wrap(lm_task(cell="mingru", depth=2))  # a plugin cell
    path, _, _ = export(lm, tmp_path / "lm.onnx")
    assert_export_matches_torch(lm, path)


def test_rtk_export_writes_model_and_sidecar_and_refuses_what_it_cannot(tmp_path, capsys):
    ckpt = save(classification_task(cell="gru"), tmp_path / "c.ckpt")
    out = tmp_path / "c.onnx"
    assert main(["export", f"ckpt={ckpt}", "format=onnx", f"out={out}"]) == 0
    assert out.is_file() and (tmp_path / "c.onnx.json").is_file()
    assert main(["export", f"ckpt={ckpt}", "format=tflite", f"out={out}"]) == 2
    assert "format='tflite' is not one of: onnx, torchscript" in capsys.readouterr().err
    bad = save(tagging_task(char_encoder="lstm"), tmp_path / "t.ckpt")
    assert main(["export", f"ckpt={bad}", f"out={tmp_path / 't.onnx'}"]) == 2
    assert "char_encoder=lstm cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "t.onnx").exists() and not (tmp_path / "t.onnx.json").exists()
    g2p = save(seq2seq_task(), tmp_path / "g2p.ckpt")
    assert main(["export", f"ckpt={g2p}", f"out={tmp_path / 'g.onnx'}"]) == 2
    assert capsys.readouterr().err == ("error: a seq2seq model cannot be exported: its decoding (beam search) runs "
                                       "in Python, step by step\n")
    assert main(["export", f"ckpt={ckpt}", f"out={tmp_path / 'no' / 'c.onnx'}"]) == 2
    assert "the folder" in capsys.readouterr().err and not (tmp_path / "no").exists()


@pytest.mark.parametrize("cell", ["peephole_lstm", "layernorm_lstm"])
def test_torchscript_keeps_a_loop_of_the_inputs_length(tmp_path, cell):
    model = wrap(classification_task(cell=cell, depth=2, direction="bi"))
    path, side, _ = export(model, tmp_path / "m.pt", fmt="torchscript")
    assert json.loads(side.read_text())["format"] == "torchscript"
    assert_export_matches_torch(model, path, fmt="torchscript")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_classifier_with_attention_pooling_exports_and_pools_over_each_sequences_own_steps(tmp_path, fmt):
    torch.manual_seed(0)
    model = wrap(classification_task(cell="lstm", depth=2, direction="bi", pooling="attention").eval())
    path, side, _ = export(model, tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt"), fmt=fmt)
    assert json.loads(side.read_text())["pooling"] == "attention"
    assert_export_matches_torch(model, path, fmt=fmt)  # padded batches of unequal lengths among them


def test_missing_onnx_gets_the_install_command(tmp_path):
    ckpt = save(classification_task(), tmp_path / "c.ckpt")
    code = ("import sys; sys.modules['onnxscript'] = None; from toolkit.cli import main; "
            f"sys.exit(main(['export', 'ckpt={ckpt}', 'out={tmp_path / 'x.onnx'}']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == ("error: format=onnx needs onnxscript, which is not installed; install it with: "
                                  'pip install "recurrent-toolkit[export]"')


def docs_block(page: str, after: str) -> str:
    """The first ```python block after the line ``after`` in a docs page."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / page).read_text(encoding="utf-8")
    rest = text[text.index(after):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```", start)]


@pytest.mark.slow
@pytest.mark.parametrize("lexicon, gazetteer", [
    (None, None),
    ({"boring": -1.0, "gripping": 0.6, "beautifully": 0.5},
     {"types": ["city", "name"], "phrases": {"berlin": [0], "carol king": [1], "carol": [1]}, "longest": 2})],
    ids=["ids", "ids+lexicon+gazetteer"])
def test_the_docs_serving_example_runs_on_onnxruntime_alone(tmp_path, lexicon, gazetteer):
    # docs/export.md's example, run where importing torch or the toolkit fails, gives what
    # the toolkit predicts (a greedy tagger and a classifier, as the page's models are; the
    # sentiment default reads VADER's lexicon and the ner default gazetteers, so also with those inputs)
    tagger = wrap(tagging_task(cell="gru", decode="greedy", gazetteer=gazetteer))
    classifier = wrap(classification_task(cell="rnn", depth=2, lexicon=lexicon))
    export(tagger, tmp_path / "ner.onnx")
    export(classifier, tmp_path / "sentiment.onnx")
    script = docs_block("export.md", "<!-- serving example -->").replace("/tmp/docs-runs/export", str(tmp_path))
    (tmp_path / "serve.py").write_text(script)
    blocker = ("import sys; sys.modules['torch'] = None; sys.modules['toolkit'] = None; "
               f"exec(compile(open({str(tmp_path / 'serve.py')!r}).read(), 'serve.py', 'exec'))")
    run = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()
    sentence = "Carol King loves Berlin ."
    reviews = ["a gripping , beautifully acted film", "a boring mess"]
    expected = tagger.lines([sentence])[0] + [line for lines in classifier.lines(reviews) for line in lines]
    assert len(printed) == len(expected) == 7
    assert printed[:5] == expected[:5]  # token<TAB>tag
    for got, want in zip(printed[5:], expected[5:]):  # label<TAB>probability<TAB>text
        (label, p, text), (label2, p2, text2) = got.split("\t"), want.split("\t")
        assert (label, text) == (label2, text2) and abs(float(p) - float(p2)) <= 1e-4


def test_an_export_that_differs_from_the_model_is_not_written(tmp_path, monkeypatch):
    import toolkit.export as ex

    model = wrap(classification_task())
    real = ex.reference
    monkeypatch.setattr(ex, "reference", lambda m, inputs: [t + 1e-3 for t in real(m, inputs)])
    with pytest.raises(ex.ExportError, match=r"differs from the model by 0\.001 \(more than 0\.0001\) on a batch "
                                             "unlike the export example, so it was not written"):
        export(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
