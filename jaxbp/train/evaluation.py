"""``jaxbp evaluate``: a run's newest checkpoint on the test set, in inference mode.

    result = jaxbp.train.evaluate_run("runs/latest")
    result.accuracy, result.confusion          # confusion[true, predicted]

Inference mode: batch norm uses the running statistics saved with the
checkpoint (``batch_norm_eval``), dropout is off, so an example's prediction
does not depend on the rest of its batch.
"""
from __future__ import annotations

import dataclasses
import os
import typing

import numpy as np

from jaxbp import data as data_lib
from jaxbp.train import checkpoint, rundir
from jaxbp.train.config import Config
from jaxbp.train.pipeline import eval_set, evaluate
from jaxbp.train.step import build_model, build_optimizer, initial_state, make_steps


class EvalResult(typing.NamedTuple):
    loss: float               # mean cross-entropy over the test set
    accuracy: float
    confusion: np.ndarray     # (K, K) counts: row = true class, column = predicted
    checkpoint: str           # the checkpoint evaluated
    epoch: int                # epochs trained when it was written
    step: int


def class_names(name, num_classes):
    """Data set ``name``'s class names (its registry entry's), or the label ids."""
    entry = data_lib.REGISTRY.get(name)
    return entry.classes if entry is not None and len(entry.classes) == num_classes else \
        tuple(str(k) for k in range(num_classes))


class SavedRun(typing.NamedTuple):
    cfg: Config
    data: typing.Any          # the jaxbp.data.Dataset
    model: typing.Any
    optimizer: typing.Any
    state: typing.Any         # the TrainState restored, host arrays
    meta: dict
    checkpoint: str


def load_run(run_dir, data_dir=None):
    """A run's config, data set, model and its newest usable checkpoint, on one device."""
    saved = rundir.read_config(run_dir)
    fields = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: v for k, v in saved.items() if k in fields})
    if data_dir is not None:
        cfg.data_dir = data_dir
    cfg.devices = 1  # one device evaluates; a run trained on several still loads
    cfg.validate()
    ds = data_lib.load(cfg.data, cfg.data_dir, cfg.seed)
    model = build_model(cfg, ds.num_classes)
    optimizer = build_optimizer(cfg, max(len(ds.x_train) // cfg.batch_size, 1))
    shapes, _ = initial_state(model, cfg, optimizer, ds.x_train.shape[1:])   # shapes alone: nothing computed
    ts, meta, path = checkpoint.restore_latest(os.path.join(run_dir, "checkpoints"), shapes)
    return SavedRun(cfg, ds, model, optimizer, ts, meta, path)


def evaluate_run(run_dir, data_dir=None, batch_size=None, picture=True):
    """Evaluate the newest usable checkpoint of the run in ``run_dir`` on its
    data set's test split (``data_dir`` overrides the one in ``config.json``).

    Writes ``evaluation.json`` and (with ``picture``) ``confusion.png`` into
    the run directory, both atomically.
    """
    cfg, ds, model, optimizer, ts, meta, path = load_run(run_dir, data_dir)
    test = eval_set(ds.x_test, ds.y_test, batch_size or cfg.eval_batch_size)
    loss, accuracy, predicted = evaluate(make_steps(model, optimizer, cfg).eval, ts.params, ts.state, test,
                                         predictions=True)
    k = ds.num_classes
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (ds.y_test, predicted), 1)
    result = EvalResult(loss, accuracy, confusion, path, meta["epoch"] + 1, int(ts.step))
    rundir.write_json(os.path.join(run_dir, "evaluation.json"),
                      {"checkpoint": os.path.basename(path), "epoch": result.epoch, "step": result.step,
                       "test_loss": loss, "test_accuracy": accuracy, "classes": list(class_names(cfg.data, k)),
                       "confusion": confusion.tolist()})
    if picture:
        from jaxbp.train import plot
        plot.save(plot.confusion_figure(confusion, class_names(cfg.data, k),
                                        f"{cfg.model} on {cfg.data}: {100 * accuracy:.2f}% "
                                        f"(epoch {result.epoch})"),
                  os.path.join(run_dir, "confusion.png"))
    return result
