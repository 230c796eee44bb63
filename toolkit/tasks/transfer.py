"""Transfer from a language model (``model.init_from=<LM checkpoint>``).

A language model learns, from text alone, what words mean and how sentences go
on; a tagger or classifier trained on a few thousand labelled examples can
start from that instead of from random numbers (Dai & Le 2015; Howard & Ruder
2018). What is carried over:

- the vocabulary: the task's data is encoded with the LM's vocabulary (so a
  word the LM read but the task's training split lacks still has a trained
  embedding), which needs the same tokenizer and normalisation;
- the embedding matrix, row for row;
- the recurrent stack's first ``depth`` layers, each direction of a
  bidirectional model from the LM's (left-to-right) layer; where the task feeds
  the first layer more than the word embedding (the tagger's shape and character
  features), the LM's weights fill the word embedding's columns and the other
  columns keep their random start.

Cell, hidden size and embedding size must be the LM's; anything else is one
clear error before training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from toolkit.checkpoints import read_checkpoint
from toolkit.errors import ConfigError
from toolkit.tasks.base import SequenceTask

HEADS_THAT_TRANSFER = ("tagging", "classification")


def _lm(path: str) -> dict:
    if not Path(path).is_file():
        raise ConfigError(f"model.init_from={path}: no such checkpoint file")
    return read_checkpoint(path, expect="language_model")


def lm_vocabulary(path: str, head: str, data: dict, model: dict) -> list[str]:
    """The LM's vocabulary, after checking (before any data loads) that the task's data is
    tokenised the LM's way and that ``model`` (cell, hidden_size, embedding_dim, depth) fits it."""
    if head not in HEADS_THAT_TRANSFER:
        raise ConfigError(f"model.init_from applies to the {' and '.join(HEADS_THAT_TRANSFER)} heads, "
                          f"not to {head}")
    hp = _lm(path)["hyper_parameters"]
    _check_fit(path, hp, data, model)
    return list(hp["spec"]["vocab"])


def _check_fit(path: str, hp: dict, data: dict, model: dict) -> None:
    spec = hp["spec"]
    for key in ("tokenizer", "normalize"):
        if data.get(key) != spec[key]:
            raise ConfigError(f"model.init_from={path} was trained with data.{key}={spec[key]!r}, but this "
                              f"run reads data.{key}={data.get(key)!r}; set data.{key}={spec[key]} so the "
                              "words map onto the language model's vocabulary")
    wanted = {"cell": (hp["cell"]["name"], model["cell"]), "hidden_size": (hp["hidden_size"], model["hidden_size"]),
              "model.embedding_dim": (hp["embedding_dim"], model["embedding_dim"])}
    diff = [f"{k}={new!r} (language model: {old!r})" for k, (old, new) in wanted.items() if old != new]
    if hp["depth"] < model["depth"]:
        diff.append(f"depth={model['depth']} (language model: {hp['depth']})")
    if diff:
        raise ConfigError(f"model.init_from={path} does not fit this model: {'; '.join(diff)}")


@torch.no_grad()
def init_from_lm(model: SequenceTask, path: str) -> str:
    """Copy the LM's embedding and recurrent layers into ``model``; returns what was copied."""
    ckpt = _lm(path)
    hp, state, mine = ckpt["hyper_parameters"], ckpt["state_dict"], model.hparams
    _check_fit(path, hp, {k: mine.spec.get(k) for k in ("tokenizer", "normalize")},
               {"cell": mine.cell["name"], "hidden_size": mine.hidden_size, "embedding_dim": mine.embedding_dim,
                "depth": mine.depth})
    if list(hp["spec"]["vocab"]) != model.vocab.itos:
        raise ConfigError(f"model.init_from={path}: the data was not encoded with the language model's vocabulary")
    model.embed.weight.copy_(state["embed.weight"])
    directions = model.rnn.num_directions
    for layer in range(mine.depth):
        for d in range(directions):
            cell = model.rnn.cells[layer * directions + d]
            for name, p in cell.named_parameters():
                src = state[f"rnn.cells.{layer}.{name}"]
                if p.shape == src.shape:
                    p.copy_(src)
                elif layer == 0 and name == "weight_ih" and p.shape[0] == src.shape[0] and p.shape[1] > src.shape[1]:
                    p[:, : src.shape[1]] = src  # the word embedding's columns; the task's own features keep theirs
                else:
                    raise ConfigError(f"model.init_from={path}: layer {layer}'s {name} is {tuple(p.shape)} here but "
                                      f"{tuple(src.shape)} in the language model (a bidirectional layer above the "
                                      "first reads both directions, which a language model has not)")
    return (f"initialised from {path}: embedding ({len(model.vocab)} words) and {mine.depth} recurrent "
            f"layer(s) x {directions} direction(s)")
