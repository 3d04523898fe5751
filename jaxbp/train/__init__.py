"""Training: jitted steps built from jaxbp's ops, the epoch loop, run directories.

    cfg = jaxbp.train.Config(model="cnn", epochs=10)
    result = jaxbp.train.fit(cfg)          # also what `jaxbp train` runs

One module per job, imports pointing down (loop → step → pipeline → parallel):

    config.py      Config: every option's name, choices, default and help (the CLI is generated from it)
    pipeline.py    the batches of an epoch, augmentation, evaluation batches
    parallel.py    the device mesh, sharded batches, replicated state
    step.py        model, optimizer, loss and one jitted train/eval step
    loop.py        fit(): epochs, metrics, the non-finite guard, checkpoints, curves
    evaluation.py  evaluate_run(): a run's newest checkpoint in inference mode, confusion matrix
    audit.py       the rules' float32 gradients against float64 on real batches (gradients.jsonl)
    rundir.py      one run per directory, one process per run directory (a lock); what --resume may change
    checkpoint.py  crash-safe checkpoints of any pytree
    plot.py        curves.png, confusion.png
"""
from jaxbp.train.config import OPTIMIZERS, Config
from jaxbp.train.evaluation import EvalResult, evaluate_run
from jaxbp.train.loop import NonFiniteError, SaveError, TrainingInterrupted, TrainResult, fit
from jaxbp.train.rundir import RunDirBusy, RunDirError
from jaxbp.train.parallel import fetch, make_mesh, replicate, shard_batch
from jaxbp.train.pipeline import EvalSet, epoch_order, eval_set, evaluate, random_flip, random_shift
from jaxbp.train.step import (Steps, TrainState, build_model, build_optimizer, init_state, initial_state, make_steps,
                              new_state, regularizer)

__all__ = ["OPTIMIZERS", "Config", "EvalResult", "EvalSet", "Steps", "NonFiniteError", "RunDirBusy", "RunDirError", "SaveError",
           "TrainResult", "TrainState", "TrainingInterrupted",
           "build_model", "build_optimizer", "epoch_order", "eval_set", "evaluate", "evaluate_run", "fetch", "fit", "init_state",
           "initial_state",
           "make_mesh", "make_steps", "new_state", "random_flip", "random_shift", "regularizer",
           "replicate", "shard_batch"]
