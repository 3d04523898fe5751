"""The training loop: epochs of compiled chunks of steps, evaluation, metrics, checkpoints.

    result = jaxbp.train.fit(jaxbp.train.Config(model="cnn", epochs=10))
    result.history[-1]["test_accuracy"]

The data order is a function of ``(seed, epoch)`` and each step's randomness of
``(seed, step)``, so a resumed run repeats an uninterrupted one exactly, also
from a checkpoint written mid-epoch (``checkpoint_every``: it keeps the losses
of the epoch's steps so far, for the epoch's mean).

The training and test sets are put on the device(s) once. An epoch is a few
calls of one compiled program that runs a chunk of steps (``lax.scan``) on
batches gathered on the device from the epoch's permutation, which is drawn
there too; the host waits once per chunk, to move the progress bar and
check that every step was finite. Evaluation is one compiled call over the
whole test set.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time
import typing

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import data as data_lib
from jaxbp.train import audit, checkpoint, rundir
from jaxbp.train.parallel import fetch, make_mesh, replicate, replicated
from jaxbp.train.pipeline import epoch_order, eval_set, evaluate
from jaxbp.train.step import build_model, build_optimizer, chunk_size, initial_state, make_steps


class TrainResult(typing.NamedTuple):
    """What :func:`fit` returns."""
    history: list             # one dict per epoch, as in metrics.jsonl
    state: typing.Any         # the final TrainState (replicated over the devices)
    test_accuracy: float | None
    model: typing.Any         # the layers.Layer trained
    step_losses: list         # the loss of every step of this call


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


class TrainingInterrupted(Exception):
    """Training was interrupted (Ctrl-C); says what was saved."""

    def __init__(self, run_dir, saved):
        self.run_dir, self.saved = run_dir, saved
        super().__init__(f"interrupted; saved: {describe(saved) if saved else 'no checkpoint yet'}")


def describe(saved):
    """The newest checkpoint written, in words: ``saved`` is ``{"epoch": epochs
    completed, "path": ...}``, with ``"in_epoch"`` (steps into the next epoch)
    and ``"step"`` for one written mid-epoch (``checkpoint_every``)."""
    if saved.get("in_epoch"):
        return (f"the checkpoint at step {saved['step']}, {saved['in_epoch']} steps into epoch "
                f"{saved['epoch'] + 1} ({saved['path']})")
    return f"the checkpoint after epoch {saved['epoch']} ({saved['path']})"


def _process_start():
    """Wall-clock time (``time.time()``) at which this process started: from
    /proc on Linux, else when jaxbp was imported (a fraction of a second later)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED


_IMPORTED = time.time()
PROCESS_START = _process_start()


def elapsed():
    """Wall seconds since this process started (imports, data and compilation included)."""
    return time.time() - PROCESS_START


def _log(quiet, *args):
    if not quiet:
        print(*args, flush=True)


def _prepare_run_dir(cfg, chief):
    """The run-directory rules (jaxbp.train.rundir), checked before data loading and
    compilation so that a mistake costs nothing."""
    if not cfg.run_dir:
        if cfg.resume:
            raise ValueError("resume=True needs a run_dir (--resume needs --run-dir)")
        return
    if cfg.resume:
        saved = rundir.read_config(cfg.run_dir)
        for field, given, old in rundir.conflicts(saved, dataclasses.asdict(cfg))[:1]:
            raise rundir.ConfigConflict(rundir.conflict_message(cfg.run_dir, field, given, old))
        if chief:
            rundir.check_free(cfg.run_dir)
            rundir.check_writable(cfg.run_dir)
        return saved
    elif chief:
        rundir.check_new(cfg.run_dir, cfg.overwrite)  # created once the run can start


class SaveError(OSError):
    """A file of the run could not be written (a full disk, say); says what was saved."""


def fit(cfg, dataset=None, quiet=False, max_epochs=None, point_latest=False):
    """Train ``cfg.model`` on ``cfg.data``; return a :class:`TrainResult`.

    ``dataset``: the :class:`jaxbp.data.Dataset` to use instead of loading
    ``cfg.data``, or a function returning it, called when the data is needed
    (what :func:`jaxbp.data.load_in_background` returns).
    ``max_epochs`` stops this call after that many epochs (the schedule still
    spans ``cfg.epochs``), so a run can be done in pieces with ``resume``.
    ``point_latest``: point ``<parent>/latest`` at the run directory once its
    ``config.json`` is written (what the ``jaxbp`` command does for its own runs).

    With ``cfg.run_dir``: writes ``config.json``, ``metrics.jsonl`` (one object
    per epoch), ``curves.png`` and ``checkpoints/`` (after every epoch, and every
    ``cfg.checkpoint_every`` steps inside one, at the end of a chunk). The
    directory must be new or empty (``cfg.overwrite`` replaces what is there);
    it is created once the data and model are ready, and is locked for this
    process while it trains (:class:`jaxbp.train.rundir.RunDirBusy` if another
    holds it). The checkpoints hold the metrics too: a resumed run rebuilds
    ``metrics.jsonl`` from its checkpoint.
    With ``cfg.resume``: continues the run in ``cfg.run_dir`` from its newest
    usable checkpoint; ``cfg`` must equal its ``config.json`` except in
    :data:`jaxbp.train.rundir.MAY_CHANGE`.
    Raises :class:`NonFiniteError` at the first non-finite step (the last
    checkpoint stays the last good one), :class:`SaveError` when a file cannot
    be written (naming it, and the checkpoint that is intact) and
    :class:`TrainingInterrupted` on Ctrl-C. ``quiet`` silences the per-epoch
    lines, not the final one.
    """
    cfg.validate()
    chief = jax.process_index() == 0  # the one process that writes files
    saved_cfg = _prepare_run_dir(cfg, chief)
    report = _Report(cfg, quiet, chief)
    if saved_cfg and saved_cfg.get("epochs", cfg.epochs) != cfg.epochs:
        report.say(f"the schedule now spans {cfg.epochs} epochs (the run had {saved_cfg['epochs']}): from here "
                   "the learning rate follows the warm-up + cosine of the longer run")
    if cfg.run_dir and chief:
        from jaxbp.train.plot import preload
        preload()  # curves.png at the end
    t = time.perf_counter()
    ds = _dataset(cfg, dataset)
    report.times["data_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    n = len(ds.x_train)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({n} examples)")
    steps_per_epoch = n // cfg.batch_size
    model = build_model(cfg, ds.num_classes)
    optimizer = build_optimizer(cfg, steps_per_epoch)
    shapes, make_state = initial_state(model, cfg, optimizer, ds.x_train.shape[1:])
    mesh = make_mesh(cfg)
    steps = make_steps(model, optimizer, cfg, mesh)
    saves = _Checkpoints(cfg, chief, steps_per_epoch)
    programs = _Programs()
    # From here on the run directory is this process's (created now for a new run).
    claim = rundir.claim(cfg.run_dir, cfg.overwrite, cfg.resume) if saves.writing else None
    history, start_epoch, failed = [], 0, True
    try:
        if not cfg.resume:
            # A new run's first chunk compiles from the state's shapes while the
            # state's own program compiles and runs (BENCHMARKS.md).
            first = next(_chunks(0, steps_per_epoch, chunk_size(steps_per_epoch, unrolled=steps.unrolled), 0,
                                 cfg.audit_every))
            programs.start(steps.chunk, *_placed(mesh, shapes, ds.x_train, ds.y_train,
                                                 jax.ShapeDtypeStruct((steps_per_epoch, cfg.batch_size), jnp.int32)),
                           length=first[1])
        ts, start_epoch, begin, history = saves.resume(shapes, make_state, report)
        saves.begin(history, point_latest)
        ts = replicate(ts, mesh)
        # The data sets live on the device(s) for the whole run.
        x_all, y_all = replicate((ds.x_train, ds.y_train), mesh)
        test = eval_set(ds.x_test, ds.y_test, cfg.eval_batch_size, mesh)
        report.times["setup_seconds"] = time.perf_counter() - t
        order_of = jax.jit(lambda key, step: epoch_order(key, step, n, cfg.batch_size),
                           out_shardings=replicated(mesh))
        report.started()
        end_epoch = cfg.epochs if max_epochs is None else min(cfg.epochs, start_epoch + max_epochs)
        # The evaluation compiles beside the training program and the first steps.
        programs.start(steps.eval, ts.params, ts.state, test.xs, test.ys, test.masks)
        for epoch in range(start_epoch, end_epoch):
            t0 = time.perf_counter()
            order = programs.get(order_of, ts.key, ts.step)(ts.key, ts.step)  # on the device(s), from (key, epoch)
            first, before = begin if epoch == start_epoch else (0, [])  # a mid-epoch checkpoint's steps and losses
            ts, losses = _epoch(cfg, model, steps, programs, saves, report, ts, (x_all, y_all), order, epoch,
                                first, before, steps_per_epoch, first_of_call=epoch == start_epoch)
            test_loss, test_acc = evaluate(programs.get(steps.eval, ts.params, ts.state, test.xs, test.ys,
                                                        test.masks), ts.params, ts.state, test)
            record = {"epoch": epoch + 1, "step": int(fetch(ts.step)), "train_loss": float(np.mean(before + losses)),
                      "test_loss": test_loss, "test_accuracy": test_acc,
                      "seconds": time.perf_counter() - t0, "elapsed": elapsed()}
            if epoch == start_epoch:  # where this process's time went before its first step
                record.update({k: report.times[k] for k in ("startup_seconds", "data_seconds", "setup_seconds")},
                              compile_seconds=programs.wait_s)  # waiting for the training and evaluation programs
            history.append(record)
            report.epoch(record)
            saves.end_of_epoch(ts, epoch, history)
            if cfg.stop_at_accuracy is not None and test_acc >= cfg.stop_at_accuracy:
                report.reached(record)
                break
        failed = False
    except KeyboardInterrupt:
        raise TrainingInterrupted(cfg.run_dir, saves.saved) from None
    except OSError as e:
        if not saves.writing:
            raise
        raise SaveError(_save_failed(e, saves.saved)) from None
    finally:
        programs.close()
        if saves.writing:
            _pictures(cfg, history[start_epoch:] and history, failed)
            claim.release()
    report.final(history)
    final = history[-1] if history else {}
    return TrainResult(history, ts, final.get("test_accuracy"), model, report.step_losses)


def _dataset(cfg, dataset):
    """``dataset`` (or what the function ``dataset`` returns), checked; else ``cfg.data`` loaded."""
    if dataset is None:
        return data_lib.load(cfg.data, cfg.data_dir, cfg.seed)
    ds = dataset() if callable(dataset) else dataset
    data_lib.check_dataset(ds, "fit's dataset")
    return ds


def _epoch(cfg, model, steps, programs, saves, report, ts, data, order, epoch, first, before, steps_per_epoch,
           first_of_call):
    """One epoch from step ``first``, in compiled chunks: each checked finite,
    audited and checkpointed where the config asks; returns the state and this
    call's losses of the epoch."""
    x_all, y_all = data
    bar = report.bar(epoch, first, steps_per_epoch)
    losses = []
    for start, length in _chunks(first, steps_per_epoch, chunk_size(steps_per_epoch, unrolled=steps.unrolled),
                                 epoch * steps_per_epoch, cfg.audit_every):
        run = programs.get(steps.chunk, ts, x_all, y_all, order, length=length)
        if first_of_call and start == first:
            report.say(f"compiled the training program in {programs.wait_s:.1f}s")
        ts, m = run(ts, x_all, y_all, order)
        finite = np.stack([fetch(m[k]) for k in ("loss_finite", "grads_finite", "state_finite")],
                          1)  # waits for the chunk
        _check_finite(finite, epoch * steps_per_epoch + start, saves.saved)
        losses += fetch(m["loss"]).tolist()
        bar.update(len(finite))
        bar.set_postfix(loss=f"{np.mean(losses[-len(finite):]):.4f}")
        done = start + length
        at = epoch * steps_per_epoch + done   # steps of the run so far
        every = cfg.audit_every
        if every and saves.writing and at // every > (at - length) // every:
            _audit(cfg, model, ts, x_all, y_all, order[done - 1], at, epoch)
        if (cfg.checkpoint_every and done < steps_per_epoch
                and done // cfg.checkpoint_every > start // cfg.checkpoint_every):
            saves.mid_epoch(ts, epoch, done, before + losses)
    bar.close()
    report.step_losses += losses
    return ts, losses


def _placed(mesh, *trees):
    """``trees``' arrays (or shapes) as ``jax.ShapeDtypeStruct`` replicated over
    ``mesh``: what :func:`replicate` makes of them, to compile for."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jax.dtypes.canonicalize_dtype(a.dtype),
                                                       sharding=replicated(mesh)), trees)


class _Programs:
    """The run's compiled programs: each compiled ahead of time, once per static
    arguments, some in background threads; ``wait_s``: how long the run waited
    for them (for one compiled in the background: the wait only)."""

    def __init__(self):
        self.programs, self.wait_s = {}, 0.0
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="jaxbp-compile")

    def get(self, fn, *args, **static):
        key = (fn, tuple(static.items()))
        if not isinstance(self.programs.get(key), jax.stages.Compiled):
            t = time.perf_counter()
            pending = self.programs.get(key)
            self.programs[key] = pending.result() if pending is not None else fn.lower(*args, **static).compile()
            self.wait_s += time.perf_counter() - t
        return self.programs[key]

    def start(self, fn, *args, **static):
        """Start compiling ``fn`` in the thread; :meth:`get` waits for it."""
        key = (fn, tuple(static.items()))
        if key not in self.programs:  # shapes and shardings only: the arrays may be donated meanwhile
            specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), args)
            self.programs[key] = self.pool.submit(lambda: fn.lower(*specs, **static).compile())

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Checkpoints:
    """The run's files (written by the chief process only): the checkpoints,
    config.json and metrics.jsonl; ``saved`` describes the newest checkpoint
    (:func:`describe`), what a failure message points at."""

    def __init__(self, cfg, chief, steps_per_epoch):
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.dir = os.path.join(cfg.run_dir, "checkpoints") if cfg.run_dir else None
        self.writing, self.saved = bool(cfg.run_dir and chief), None

    def resume(self, shapes, make_state, report):
        """``(state, first epoch, (first step, its epoch's losses so far), history)``:
        from the newest usable checkpoint when resuming (read into the state's
        ``shapes``: no initial state is made), else ``make_state()`` and the start."""
        cfg = self.cfg
        if not cfg.resume:
            return make_state(), 0, (0, []), []
        if not checkpoint.list_checkpoints(self.dir):
            # Stopped before its first checkpoint: nothing to lose, so it starts again.
            report.say(f"no checkpoint in {self.dir} yet: the run starts from its beginning")
            return make_state(), 0, (0, []), []
        ts, meta, path = checkpoint.restore_latest(self.dir, shapes, check=_resumable(cfg.run_dir, self.steps_per_epoch))
        start_epoch = meta["epoch"] + 1  # epochs completed
        self.saved, begin = {"epoch": start_epoch, "path": path}, (0, [])
        if "in_epoch" in meta:  # written mid-epoch
            begin = (meta["in_epoch"], meta["losses"])
            self.saved.update(in_epoch=meta["in_epoch"], step=int(fetch(ts.step)))
        if cfg.audit_every and self.writing:   # the audits past the checkpoint are done again
            audit.write(cfg.run_dir, audit.read(cfg.run_dir, until_step=int(fetch(ts.step))))
        report.say(f"resumed from {describe(self.saved)}")
        return ts, start_epoch, begin, meta["history"]

    def begin(self, history, point_latest):
        """config.json, and metrics.jsonl from the checkpoint's history (the file
        may have lost rows); ``history`` (the run's list, growing) goes into every checkpoint."""
        self.history = history
        if self.writing:
            rundir.write_json(os.path.join(self.cfg.run_dir, "config.json"), dataclasses.asdict(self.cfg))
            rundir.write_metrics(self.cfg.run_dir, history)
            if point_latest:
                rundir.point_latest(self.cfg.run_dir)

    def mid_epoch(self, ts, epoch, done, losses):
        """The state after ``done`` steps of ``epoch`` (checked finite) and the epoch's losses so far."""
        if self.writing:
            step = int(fetch(ts.step))
            path = checkpoint.save(self.dir, step, jax.tree.map(fetch, ts),
                                   {"epoch": epoch - 1, "in_epoch": done, "losses": losses,
                                    "history": list(self.history)})
            self.saved = {"epoch": epoch, "in_epoch": done, "step": step, "path": path}

    def end_of_epoch(self, ts, epoch, history):
        """The checkpoint first, holding the metrics too, then metrics.jsonl."""
        if self.writing:
            path = checkpoint.save(self.dir, int(fetch(ts.step)), jax.tree.map(fetch, ts),
                                   {"epoch": epoch, "history": list(history)})
            self.saved = {"epoch": epoch + 1, "path": path}
            rundir.write_metrics(self.cfg.run_dir, history)


class _Report:
    """What the run says and when: the per-epoch lines (not with ``quiet``),
    the progress bar (at a terminal), the start-up times, the final line."""

    def __init__(self, cfg, quiet, chief):
        self.cfg, self.quiet, self.chief = cfg, quiet, chief
        self.times, self.step_losses, self.reached_at = {}, [], None
        self.t_start = time.perf_counter()

    def say(self, line):
        _log(self.quiet, line)

    def started(self):
        self.t_start, self.times["startup_seconds"] = time.perf_counter(), elapsed()
        self.say(f"started in {self.times['startup_seconds']:.1f}s (data {self.times['data_seconds']:.1f}s, "
                 f"model state and devices {self.times['setup_seconds']:.1f}s)")

    def bar(self, epoch, first, steps):
        from tqdm.auto import tqdm
        # The bar is for a person at a terminal; a log gets the per-epoch lines only.
        return tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                    disable=self.quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)

    def epoch(self, r):
        self.say(f"epoch {r['epoch']:3d}/{self.cfg.epochs}  train_loss {r['train_loss']:.4f}  "
                 f"test_loss {r['test_loss']:.4f}  test_acc {100 * r['test_accuracy']:6.2f}%  {r['seconds']:.1f}s")

    def reached(self, r):
        """Said even with ``quiet``, by the chief process."""
        self.reached_at = r
        _log(not self.chief, f"reached test accuracy {100 * r['test_accuracy']:.2f}% >= "
                             f"{100 * self.cfg.stop_at_accuracy:g}% at epoch {r['epoch']}: {r['elapsed']:.1f}s "
                             f"since the process started, {time.perf_counter() - self.t_start:.1f}s of training "
                             "(compilation included)")

    def final(self, history):
        if self.cfg.stop_at_accuracy is not None and self.reached_at is None and self.chief and history:
            self.say(f"test accuracy {100 * self.cfg.stop_at_accuracy:g}% not reached in {len(history)} epochs")
        if self.chief:
            final = history[-1] if history else {}
            print(f"final test accuracy {100 * final.get('test_accuracy', float('nan')):.2f}% "
                  f"({time.perf_counter() - self.t_start:.1f}s)", flush=True)


def _save_failed(error, saved):
    """A failed write in words: the file, why, and what is safe."""
    then = ("is intact; once it can be written, resume the run (resume=True, --resume)" if saved else
            "no checkpoint had been written yet; once it can be written, start the run again "
            "(overwrite=True, --overwrite)")
    return (f"cannot write {error.filename or 'a file of the run'}: {error.strerror or error}; "
            + (f"{describe(saved)} {then}" if saved else then))


def _pictures(cfg, history, failed):
    """``curves.png`` (and the audit's picture) of ``history`` (none if empty).
    After a failure, one that cannot be written is skipped: the failure is the
    message, not this."""
    from jaxbp.train import plot
    try:
        if history:
            plot.plot_curves(history, os.path.join(cfg.run_dir, "curves.png"),
                             title=f"{cfg.model} on {cfg.data}, {cfg.gradients} gradients")
        if cfg.audit_every and audit.read(cfg.run_dir):
            plot.save(audit.figure(audit.read(cfg.run_dir), f"{cfg.model} on {cfg.data}: float32 gradients "
                                   "against float64, on training batches"),
                      os.path.join(cfg.run_dir, audit.PICTURE))
    except OSError:
        if not failed:
            raise


def _resumable(run_dir, steps_per_epoch):
    """The check :func:`jaxbp.train.checkpoint.restore_latest` makes of a
    checkpoint's metadata: its epoch, step and metrics agree with each other."""
    def check(meta, ts):
        step = int(fetch(ts.step))
        if "history" not in meta:  # written by an older jaxbp: its metrics are in metrics.jsonl
            meta["history"] = rundir.read_metrics(run_dir)[:meta["epoch"] + 1]
        epochs = [r.get("epoch") for r in meta["history"]]
        expected = (meta["epoch"] + 1) * steps_per_epoch + meta.get("in_epoch", 0)
        if step != expected or epochs != list(range(1, meta["epoch"] + 2)):
            raise checkpoint.CheckpointError(
                f"checkpoint at step {step} says {meta['epoch'] + 1} epochs of {steps_per_epoch} steps "
                f"(+{meta.get('in_epoch', 0)}) and holds metrics of epochs {epochs}: they disagree")
    return check


def _audit(cfg, model, ts, x_all, y_all, batch, step, epoch):
    """:func:`jaxbp.train.audit.audit` on the batch of the chunk's last step (before augmentation)."""
    params, state = jax.tree.map(fetch, (ts.params, ts.state))
    x, y = fetch(x_all[batch]), fetch(y_all[batch])
    rows = audit.audit(model, params, state, x, y, key=jax.random.fold_in(fetch(ts.key), step))
    audit.append(cfg.run_dir, {"step": step, "epoch": epoch + 1, "dtype": "float32", "parameters": rows})


def _chunks(first, steps, chunk, offset, every=0):
    """``(start, length)`` of an epoch's chunks from step ``first``; with ``every``,
    a chunk also ends where the run's step count (``offset + start``) reaches a
    multiple of it (an audit there), at the cost of a program per new length."""
    start = first
    while start < steps:
        length = min(chunk, steps - start)
        if every:
            length = min(length, every - (offset + start) % every)
        yield start, length
        start += length


def _check_finite(finite, first_step, saved=None):
    """Raise at the first step (1-based, counted over the run) whose loss,
    gradients or new state (parameters, optimizer state, running statistics)
    are not finite, naming which and what was saved before it. ``finite``:
    ``(steps, 2 or 3)`` booleans in that order."""
    flags = np.asarray(finite, bool)
    bad = np.flatnonzero(~flags.all(axis=1))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        what = ("loss", "gradients", "state (parameters, optimizer state or running statistics)")[
            int(np.argmin(flags[bad[0]]))]
        kept = f"{describe(saved)} is the last good state" if saved else "no checkpoint was written before it"
        raise NonFiniteError(f"non-finite {what} at step {step}; {kept}; try a smaller lr (--lr), "
                             "or jax_debug_nans (--debug-nans) to locate it")
