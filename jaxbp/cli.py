"""The ``jaxbp`` command: ``train``, ``gradcheck``, ``bench``.

Usage errors, and a run directory in use by another process, end with one
line on stderr and exit code 2; other failures (bad data, unusable
checkpoint, non-finite training, a file that cannot be written) with one line
and exit code 1. ``--debug`` shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


class _UsageError(Exception):
    """A combination of options that cannot work (exit code 2)."""


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help line; not for on/off flags."""

    def _get_help_string(self, action):
        """One default per option: none for flags, for ``None`` (the help says
        what happens then) or where the help already states it."""
        if action.nargs == 0 or action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--debug`` is never taken for ``--debug-nans``), every
    default shown in ``--help``, usage errors as one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)
        # --debug before or after the subcommand (SUPPRESS: a subcommand's default
        # must not undo a --debug given before it).
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show full tracebacks instead of one-line errors")

    def error(self, message):
        self.exit(EXIT_USAGE, f"jaxbp: error: {message} (see '{self.prog} --help')\n")


def _number(cast, accept, expected):
    """An argparse type: ``cast`` the text, then require ``accept(value)``."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, lambda v: v > 0, "a positive integer")


def _add_train(sub):
    import dataclasses

    from jaxbp.train import Config
    from jaxbp.train.config import RECIPES, choices
    p = sub.add_parser("train", help="train a model (default: the CNN on the bundled digits)",
                       description="Train a model whose gradients come from the hand-derived rules "
                                   "(or, with --gradients autodiff, from JAX). Each run gets its own "
                                   "run directory; --resume continues the run saved there.",
                       epilog="Environment: JAXBP_DATA (where downloaded data sets are kept), "
                              "JAXBP_COMPILATION_CACHE (JAX's compilation cache directory, 'off' for none). "
                              "On a GPU the command takes memory as it needs it "
                              "(XLA_PYTHON_CLIENT_PREALLOCATE=false) unless JAX's memory variables are set.")
    # One option per Config field: names, choices, defaults and help come from the config.
    for f in dataclasses.fields(Config):
        meta, flag = dict(f.metadata), "--" + f.name.replace("_", "-")
        changed = []
        for (data, model), recipes in RECIPES.items():
            values = {where: value[f.name] for where, value in recipes.items() if f.name in value}
            if len(values) == len(recipes) and len(set(map(repr, values.values()))) == 1:
                changed.append(f"{data} with {model}: {next(iter(values.values()))}")   # the same on every backend
            else:
                changed += [f"{data} with {model} on {'CPUs' if where == 'cpu' else 'accelerators'}: {v}"
                            for where, v in values.items()]
        if changed:  # a data set's recipe changes this default
            meta["help"] += f" ({'; '.join(changed)})"
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=meta["help"])
        elif "choices" in meta:
            p.add_argument(flag, choices=choices(f), default=f.default, help=meta["help"])
        else:
            p.add_argument(flag, type=_argument_type(meta), default=f.default, help=meta["help"],
                           metavar="PIXELS" if f.name == "augment" else None)
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-process run: address of process 0 (jax.distributed)")
    p.add_argument("--num-processes", type=_positive_int, default=1, help="multi-process run: process count")
    p.add_argument("--process-id", type=int, default=0, help="multi-process run: this process, 0 to P-1")
    p.add_argument("--peer-timeout", type=_positive_int, default=60, metavar="SECONDS",
                   help="multi-process run: how long to wait for the other processes to join, and how long "
                        "one may go silent before the run ends as lost")
    p.add_argument("--quiet", action="store_true", help="only the final result line and the run directory")
    p.add_argument("--debug-nans", action="store_true", help="turn on JAX's NaN checking")
    p.set_defaults(func=_train)


def _argument_type(meta):
    """argparse's type for a config field: its cast, then its rule."""
    if "rule" not in meta:
        return meta.get("type")
    accept, expected = meta["rule"]
    return _number(meta["type"], accept, expected)


def _compilation_cache():
    """JAX's persistent compilation cache, so that a second run does not compile
    again: ``$JAXBP_COMPILATION_CACHE`` (``off`` disables it), else JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` if set, else ``xla/`` in jaxbp's user cache
    directory (next to the downloaded data)."""
    import os

    import jax
    where = os.environ.get("JAXBP_COMPILATION_CACHE")
    if where == "off" or (where is None and os.environ.get("JAX_COMPILATION_CACHE_DIR")):
        return
    if where is None:
        from jaxbp.data import download
        where = download.cache_dir("xla")
    jax.config.update("jax_compilation_cache_dir", where)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # The train and eval steps, not each small eager op.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


_distributed = False  # whether this process joined a multi-process run (jax.distributed)
_run = {}             # this process's run: its directory, its place among the processes


def _train(a):
    global _distributed
    import dataclasses
    import os

    import jax

    from jaxbp import data as data_lib
    _compilation_cache()
    # The data set's files are read while JAX starts its devices (seconds on a GPU).
    pending = None if a.resume else data_lib.load_in_background(a.data, a.data_dir, a.seed)
    if a.num_processes > 1:
        if not a.coordinator:
            raise _UsageError("--num-processes > 1 needs --coordinator HOST:PORT")
        if not 0 <= a.process_id < a.num_processes:
            raise _UsageError(f"--process-id must be in [0, {a.num_processes}), got {a.process_id}")
        from jaxbp.train.parallel import join
        print(f"jaxbp: process {a.process_id} of {a.num_processes}: joining the others at {a.coordinator} "
              f"(up to {a.peer_timeout} s)", file=sys.stderr, flush=True)
        join(a.coordinator, a.num_processes, a.process_id, a.peer_timeout)
        _distributed = True
        _tell_supervisor("joined")
    _run.update(process=a.process_id, of=a.num_processes)
    from jaxbp import precision
    from jaxbp.train import Config, fit, rundir
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in vars(a).items() if k in fields and k in a.given}
    chief = jax.process_index() == 0
    # The run-directory and device rules are train's (Config.validate, fit); here
    # they only become usage errors (exit 2).
    if a.resume:
        run_dir = a.run_dir or os.path.join(rundir.ROOT, rundir.LATEST)
        saved = {} if a.overwrite else rundir.read_config(run_dir)
        cfg = Config(**{**{k: v for k, v in saved.items() if k in fields}, **given, "run_dir": run_dir})
    else:
        run_dir = a.run_dir or rundir.new_path(a.model, a.data)
        cfg = Config(**{**given, "data": a.data, "run_dir": run_dir})
    _refuse_ignored(cfg.model, {k: getattr(cfg, k) for k in given})
    _run["run_dir"] = run_dir
    precision.enable(cfg.dtype)
    try:
        cfg.validate()
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if a.debug_nans:
        jax.config.update("jax_debug_nans", True)
    same = pending is not None and (cfg.data, cfg.data_dir, cfg.seed) == (a.data, a.data_dir, a.seed)
    fit(cfg, dataset=pending if same else None, quiet=a.quiet or not chief,
        point_latest=a.run_dir is None and not a.resume)
    if chief:
        print(f"run directory: {run_dir}")
    return 0


def build_parser():
    from jaxbp import __version__  # not the installed metadata: a source tree on PYTHONPATH has none
    p = _Parser(prog="jaxbp", description="Hand-derived backpropagation as JAX ops.")
    p.add_argument("--version", action="version", version=f"jaxbp {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    for add in _extra_commands():
        add(sub)
    return p


def _extra_commands():
    return [_add_evaluate, _add_gradcheck, _add_bench]


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="test loss, accuracy and confusion matrix of a run's newest checkpoint",
                       description="Evaluate the newest usable checkpoint of a run on its data set's test "
                                   "split in inference mode (batch norm with its running statistics, no "
                                   "dropout); writes evaluation.json and confusion.png into the run directory.")
    p.add_argument("--run-dir", default=None, help="the run (default: runs/latest)")
    p.add_argument("--data-dir", default=None, help="where the data set is, if not where config.json says")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="examples per evaluation batch (default: the run's --eval-batch-size)")
    p.set_defaults(func=_evaluate)


def _evaluate(a):
    import os

    from jaxbp.train import evaluate_run, rundir
    _compilation_cache()
    run_dir = a.run_dir or os.path.join(rundir.ROOT, rundir.LATEST)
    r = evaluate_run(run_dir, a.data_dir, a.batch_size)
    print(f"{r.checkpoint} (epoch {r.epoch}, step {r.step}), inference mode:")
    print(f"test loss {r.loss:.4f}  test accuracy {100 * r.accuracy:.2f}%  ({int(r.confusion.sum())} examples)")
    print(f"confusion matrix: {os.path.join(run_dir, 'confusion.png')}")
    return 0


def _refuse_ignored(model, options):
    """A model option the model does not read (``--model resnet20 --width 8``)
    is a usage error: it would be silently ignored."""
    from jaxbp import layers
    reads = layers.model_entry(model).options
    ignored = layers.ignored_options(model, {k: v for k, v in options.items() if k in layers.MODEL_OPTIONS})
    if ignored:
        flags = lambda names: ", ".join("--" + n for n in names) or "no model option"
        raise _UsageError(f"{flags(ignored)}: --model {model} does not read {'it' if len(ignored) == 1 else 'them'} "
                          f"(it reads {flags(reads)}); leave {'it' if len(ignored) == 1 else 'them'} out")


def _add_gradcheck(sub):
    p = sub.add_parser("gradcheck", help="custom vs autodiff gradients: every op, then every model parameter",
                       description="Exit code 1 when any check fails. --op module:function checks a rule "
                                   "of your own with jaxbp.check (every check, with a diagnosis).")
    from jaxbp import layers
    p.add_argument("--model", choices=tuple(layers.MODELS), default="cnn",
                   help="the model whose parameters are checked")
    p.add_argument("--dtype", choices=["float64", "float32", "bfloat16"], default="float64",
                   help="float64: rules against their twins (tight); float32/bfloat16: the rules' and the "
                        "twins' errors against the float64 truth, side by side")
    p.add_argument("--op", action="append", metavar="NAME",
                   help="check only this built-in op (repeatable; default: every op), or module:function "
                        "for an op of your own (its @jaxbp.op(example=...) inputs, or --shape), or module: "
                        "for every op of a module that declares example inputs")
    p.add_argument("--shape", action="append", type=_shape, metavar="D,D,...",
                   help="with --op module:function: one float64 argument of this shape (repeatable, in order)")
    p.add_argument("--run-dir", default=None,
                   help="audit a run's newest checkpoint instead: every parameter's float32 gradient on its "
                        "first training batch, by the rules and by the twins, against float64")
    p.add_argument("--data-dir", default=None, help="with --run-dir: where its data set is, if not where "
                                                    "config.json says")
    p.set_defaults(func=_gradcheck)


def _shape(text):
    try:
        dims = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 4,3, got {text!r}")
    return dims


def _gradcheck(a):
    import jax
    jax.config.update("jax_enable_x64", True)   # the float64 truth, in every --dtype
    from jaxbp.ops import __all__ as op_names
    from jaxbp.tools import gradcheck
    user = [o for o in a.op or () if ":" in o]
    unknown = [o for o in a.op or () if ":" not in o and o not in op_names]
    if unknown:
        raise _UsageError(f"--op: unknown op {unknown[0]!r} (built-in: {', '.join(op_names)}; "
                          "or module:function for your own, module: for every op of a module)")
    if user and len(user) != len(a.op):
        raise _UsageError("--op: give either built-in op names or one module:function")
    if a.shape and not user:
        raise _UsageError("--shape applies to --op module:function")
    if a.run_dir:
        if a.op:
            raise _UsageError("--run-dir audits a run's model; it takes no --op")
        return 0 if gradcheck.audit_saved_run(a.run_dir, a.data_dir, "float32" if a.dtype == "float64"
                                              else a.dtype) else EXIT_FAILURE
    if user and user[0].endswith(":") and (len(user) > 1 or a.shape):
        raise _UsageError("--op module: checks every op of the module with its example inputs: give it alone, "
                          "without --shape")
    if user:
        try:
            ok = (gradcheck.check_user_module(user[0], a.dtype) if user[0].endswith(":") else
                  all([gradcheck.check_user_op(spec, a.shape, a.dtype) for spec in user]))
        except gradcheck.OpSpecError as e:
            raise _UsageError(str(e)) from None
    else:
        ok = gradcheck.main(a.model, a.dtype, a.op)
    return 0 if ok else EXIT_FAILURE


def _add_bench(sub):
    from jaxbp import layers, precision
    from jaxbp.ops import CHOICES
    p = sub.add_parser("bench", help="time one train step: custom rules vs autodiff twins",
                       description="One jitted train step of a registry model (no dropout), interleaved timing "
                                   "after warm-up (median), plus compiled temp memory. Against Flax NNX: "
                                   "python benchmarks/vs_flax.py with the same options.")
    p.add_argument("--model", choices=tuple(layers.MODELS), default="cnn", help="the model of the train step")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="examples per step")
    p.add_argument("--dtype", choices=precision.NAMES, default="float32",
                   help="precision policy, as jaxbp train's")
    p.add_argument("--width", type=_positive_int, help="the model's width, as jaxbp train's")
    p.add_argument("--block", choices=layers.CNN_BLOCKS, help="the cnn's block order, as jaxbp train's")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], help="layout inside the network, as jaxbp train's")
    p.add_argument("--algorithm", choices=CHOICES, help="conv2d algorithm, as jaxbp train's")
    p.add_argument("--rounds", type=_positive_int, default=20, help="timed rounds (one call of each candidate)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_bench, baselines=None)


def _bench(a):
    import json

    from jaxbp import precision
    precision.enable(a.dtype)
    from jaxbp.tools import bench
    given = {k: getattr(a, k) for k in ("width", "block", "layout", "algorithm")}
    _refuse_ignored(a.model, given)
    results = bench.run(a.model, a.batch_size, a.dtype, a.rounds, a.baselines, **given)
    opts = bench.options(a.model, **given)
    if a.json:
        print(json.dumps({"model": a.model, "batch_size": a.batch_size, "dtype": a.dtype, "options": opts,
                          "results": results}, indent=2))
    else:
        extra = "".join(f", {k} {v}" for k, v in opts.items() if k != "dropout")
        print(bench.table(results, a.model, a.batch_size, a.dtype, extra))
    return 0


def _given(argv):
    """The options the user typed, as destinations (defaults left out): what
    ``--resume`` compares with the saved run."""
    probe = build_parser()
    parsers = [probe] + [c for a in probe._actions if isinstance(a, argparse._SubParsersAction)
                         for c in a.choices.values()]
    for parser in parsers:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        parser._defaults.clear()
    return set(vars(probe.parse_args(argv)))


def _one_line_warnings():
    """jaxbp's own warnings (a checkpoint skipped for an older one) as one
    ``jaxbp: warning: ...`` line, not Python's two lines with a source line."""
    import warnings
    from jaxbp.train.checkpoint import CheckpointWarning
    python_format = warnings.formatwarning

    def format(message, category, *args, **kwargs):
        if issubclass(category, CheckpointWarning):
            return f"jaxbp: warning: {message}\n"
        return python_format(message, category, *args, **kwargs)
    warnings.formatwarning = format


def main(argv=None, baselines=None):
    """The ``jaxbp`` command; returns its exit code. ``baselines``: extra
    candidates for ``bench`` (``benchmarks/vs_flax.py`` passes Flax NNX's)."""
    argv = sys.argv[1:] if argv is None else argv
    _one_line_warnings()
    args = build_parser().parse_args(argv)
    args.given = _given(argv)
    if baselines is not None:
        args.baselines = baselines
    if getattr(args, "debug", False):
        return args.func(args)
    from jaxbp.train.checkpoint import CheckpointError
    from jaxbp.data import DataError
    from jaxbp.train import NonFiniteError, TrainingInterrupted
    from jaxbp.train.loop import describe
    from jaxbp.train.parallel import PeerError
    from jaxbp.train.rundir import ConfigConflict, RunDirBusy
    try:
        return args.func(args)
    except (_UsageError, RunDirBusy, ConfigConflict) as e:
        _say(f"jaxbp: error: {e}")
        return EXIT_USAGE
    except (DataError, CheckpointError, NonFiniteError, PeerError, ValueError, OSError) as e:
        _say(f"jaxbp: error: {e}")
        return EXIT_FAILURE
    except TrainingInterrupted as e:
        if e.saved:
            _say(f"jaxbp: interrupted; saved: {describe(e.saved)}; "
                 f"resume with: jaxbp train --run-dir {e.run_dir} --resume")
        else:
            _say(f"jaxbp: interrupted before the first checkpoint; start it again with: jaxbp train "
                 f"--run-dir {e.run_dir} --resume")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say("jaxbp: interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:
        if not _distributed:
            raise
        # In a multi-process run, an error from JAX's runtime (a collective
        # whose peer is gone) is the run's end, not a bug to show as a traceback.
        _say(f"jaxbp: error: {_lost(str(e))}")
        return EXIT_FAILURE


def _say(line):
    """The command's last line: on stderr, or, for a process run by
    :func:`_supervise`, to the supervisor, which prints it once this process
    has ended (after anything JAX's threads still print)."""
    import os
    fd = os.environ.get(SUPERVISED)
    if fd and fd.isdigit():
        try:
            os.write(int(fd), f"say {line}\n".encode())
            return
        except OSError:
            pass
    print(line, file=sys.stderr, flush=True)


def _lost(reason):
    """A multi-process run that lost a process, in one line: which process,
    what happened, the newest checkpoint, how to go on."""
    from jaxbp.train import checkpoint
    import os
    newest = checkpoint.list_checkpoints(os.path.join(_run.get("run_dir", ""), "checkpoints"))
    first = reason.strip().splitlines()[0][:300] if reason.strip() else "no reason given"
    return (f"process {_run.get('process', '?')} of {_run.get('of', '?')}: the run lost another process ({first}); "
            f"newest checkpoint: {newest[-1] if newest else 'none'}; start every process again with --resume")


# JAX's GPU memory settings (read when it starts its devices).
GPU_MEMORY_ENV = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                  "XLA_PYTHON_CLIENT_ALLOCATOR")


def process_defaults():
    """What the ``jaxbp`` command sets for its own process before JAX starts:
    GPU memory taken as the arrays need it (JAX's
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false``) instead of 75 % of the card up
    front, unless one of :data:`GPU_MEMORY_ENV` is set (then all are left as
    the user has them): reserving the card up front made a short run's start
    seconds slower, its steps no faster (BENCHMARKS.md). Growing on demand
    fragments memory more (JAX's GPU memory notes): a model that needs most of
    the card may want ``XLA_PYTHON_CLIENT_PREALLOCATE=true``."""
    import os
    if not any(name in os.environ for name in GPU_MEMORY_ENV):
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


def run():
    """The ``jaxbp`` command: :func:`process_defaults`, :func:`main`, then the process ends at once.

    When ``main`` returns, every file the command wrote is complete (written to
    a temporary name, fsynced, renamed); what Python's own shutdown would still
    do is tear the interpreter down, a noticeable part of a short run with JAX
    and matplotlib loaded (BENCHMARKS.md). So the streams are flushed, the exit handlers run (they are
    quick: temporary files, logging, JAX's own), and the process exits without
    the teardown. Not in a multi-process run that succeeded: there JAX's
    distributed service takes its leave of the other processes during that
    shutdown (one that failed does not wait for peers that may be gone).
    A multi-process run's process runs under :func:`_supervise`."""
    import os
    process_defaults()
    if _processes(sys.argv[1:]) > 1 and SUPERVISED not in os.environ:
        sys.exit(_supervise(sys.argv[1:]))
    code = main()
    if _distributed and code == 0:
        sys.exit(code)
    import atexit
    sys.stdout.flush()
    sys.stderr.flush()
    if not _distributed:  # a failed multi-process run: JAX's exit handler would wait for, or abort on, peers
        atexit._run_exitfuncs()  # what a normal exit runs first (CPython)
    os._exit(code)


SUPERVISED = "JAXBP_SUPERVISED"


def _option(argv, name, default):
    """The value typed for option ``name`` (``--name V`` or ``--name=V``; the
    last one, as argparse takes it), read before anything heavy is imported."""
    value = default
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            value = arg.partition("=")[2]
        elif arg == name and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _processes(argv):
    value = _option(argv, "--num-processes", "1")
    return int(value) if value.isdigit() else 1


def _die_with_parent():
    """In the child, before it starts: end when the supervisor ends (Linux), so
    that killing the process a user sees kills the run's process too."""
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _tell_supervisor(word):
    import os
    fd = os.environ.get(SUPERVISED)
    if fd and fd.isdigit():
        os.write(int(fd), f"{word}\n".encode())


def _supervise(argv):
    """Run this process of a multi-process run as a child and wait for it.

    When another process dies, JAX's distributed service may end this one
    from C++ (an abort, exit 134, with a page of logs) before Python can say
    anything. The supervisor, which imports nothing heavy, prints the child's
    last line (sent through a pipe) once the child has ended, or, for a child
    that was aborted, says what happened. Ctrl-C reaches both (one process
    group); the child's own handling decides."""
    import os
    import signal
    import subprocess
    read, write = os.pipe()
    child = subprocess.Popen([sys.executable, "-m", "jaxbp.cli", *argv], env={**os.environ, SUPERVISED: str(write)},
                             pass_fds=(write,), preexec_fn=_die_with_parent)
    os.close(write)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    with os.fdopen(read) as f:
        told = f.read().splitlines()   # until the child ends
    code = child.wait()
    said = [line[len("say "):] for line in told if line.startswith("say ")]
    if said:
        print(*said, sep="\n", file=sys.stderr, flush=True)
    if code >= 0 and code != 134:   # the child ended itself, having said why
        return code
    _run.update(process=_option(argv, "--process-id", "0"), of=_processes(argv),
                run_dir=_option(argv, "--run-dir", os.path.join("runs", "latest")))
    if "joined" not in told:
        coordinator, timeout = _option(argv, "--coordinator", "?"), _option(argv, "--peer-timeout", "60")
        line = (f"process {_run['process']} of {_run['of']}: the other processes did not join at {coordinator} "
                f"within {timeout} s (--peer-timeout): start them, or check the address")
    else:
        how = ("aborted by JAX's distributed service" if code in (134, -signal.SIGABRT) else
               f"killed by {signal.Signals(-code).name}")
        line = _lost(f"{how}: another process died or stopped answering")
    print(f"jaxbp: error: {line}", file=sys.stderr, flush=True)
    return EXIT_FAILURE


if __name__ == "__main__":
    run()
