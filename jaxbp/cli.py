"""The ``jaxbp`` command: ``train``, ``gradcheck``, ``bench``.

Usage errors end with one line on stderr and exit code 2; other failures
(bad data, unusable checkpoint, non-finite training) with one line and exit
code 1. ``--debug`` shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE, EXIT_FAILURE = 2, 1


class _UsageError(Exception):
    """A combination of options that cannot work (exit code 2)."""


class _Parser(argparse.ArgumentParser):
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
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive finite number")
_nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def _add_train(sub):
    from jaxbp.train import Config, DTYPES, OPTIMIZERS
    d = Config()
    p = sub.add_parser("train", help="train a model (default: the CNN on the bundled digits)",
                       description="Train a model whose gradients come from the hand-derived rules "
                                   "(or, with --gradients autodiff, from JAX).")
    p.add_argument("--model", choices=["cnn", "mlp"], default=d.model)
    p.add_argument("--data", choices=["digits", "mnist", "fashion-mnist", "synthetic"], default=d.data)
    p.add_argument("--data-dir", help="directory with the four IDX files (for mnist/fashion-mnist)")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="peak learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--weight-decay", type=_nonnegative_float, default=d.weight_decay,
                   help="decoupled for adamw; otherwise the L2 term R = (λ/2)Σ‖W‖² in the loss")
    p.add_argument("--warmup-epochs", type=_nonnegative_float, default=d.warmup_epochs)
    p.add_argument("--augment", type=int, default=d.augment, metavar="PIXELS",
                   help="random shifts of up to this many pixels (0: off)")
    p.add_argument("--dropout", type=_nonnegative_float, default=d.dropout,
                   help="dropout rate before the last dense layer")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--devices", type=_positive_int, default=None,
                   help="data-parallel over this many devices (default: all, of all processes)")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-process run: address of process 0 (jax.distributed)")
    p.add_argument("--num-processes", type=_positive_int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--gradients", choices=["custom", "autodiff"], default=d.gradients)
    p.add_argument("--dtype", choices=DTYPES, default=d.dtype,
                   help="compute dtype (parameters stay float32)")
    p.add_argument("--algorithm", choices=["explicit", "implicit"], default=d.algorithm,
                   help="conv2d algorithm")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], default=d.layout,
                   help="layout inside the CNN (input is NCHW either way)")
    p.add_argument("--run-dir", default="runs/latest",
                   help="where metrics.jsonl, curves.png, config.json and checkpoints/ go")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--debug-nans", action="store_true", help="turn on JAX's NaN checking")
    p.set_defaults(func=_train)


def _train(a):
    import jax
    if a.num_processes > 1:
        if not a.coordinator:
            raise _UsageError("--num-processes > 1 needs --coordinator HOST:PORT")
        if not 0 <= a.process_id < a.num_processes:
            raise _UsageError(f"--process-id must be in [0, {a.num_processes}), got {a.process_id}")
        jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    if a.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if a.debug_nans:
        jax.config.update("jax_debug_nans", True)
    from jaxbp.train import Config, fit
    cfg = Config(model=a.model, data=a.data, data_dir=a.data_dir, epochs=a.epochs,
                 batch_size=a.batch_size, lr=a.lr, optimizer=a.optimizer, weight_decay=a.weight_decay,
                 warmup_epochs=a.warmup_epochs, seed=a.seed, gradients=a.gradients, dtype=a.dtype,
                 algorithm=a.algorithm, layout=a.layout, run_dir=a.run_dir, resume=a.resume,
                 augment=a.augment, dropout=a.dropout, devices=a.devices)
    if a.data in ("mnist", "fashion-mnist") and not a.data_dir:
        raise _UsageError(f"--data {a.data} needs --data-dir DIR with the four IDX files")
    fit(cfg, quiet=a.quiet or jax.process_index() > 0)
    if not a.quiet and jax.process_index() == 0:
        print(f"run directory: {a.run_dir}")
    return 0


def build_parser():
    p = _Parser(prog="jaxbp", description="Hand-derived backpropagation as JAX ops.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    for add in _extra_commands():
        add(sub)
    return p


def _extra_commands():
    return [_add_gradcheck, _add_bench]


def _add_gradcheck(sub):
    p = sub.add_parser("gradcheck", help="custom vs autodiff gradients: every op, then every model parameter",
                       description="Exit code 1 when any error exceeds its dtype's tolerance.")
    p.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.set_defaults(func=_gradcheck)


def _gradcheck(a):
    import jax
    if a.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from jaxbp import gradcheck
    ok = gradcheck.main(a.model, a.dtype)
    return 0 if ok else EXIT_FAILURE


def _add_bench(sub):
    from jaxbp.ops import DEFAULT_ALGORITHM
    p = sub.add_parser("bench", help="time one train step: custom, autodiff twins, Flax NNX",
                       description="Interleaved timing after warm-up (median), plus compiled temp memory.")
    p.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--width", type=_positive_int, default=256, help="hidden width of the mlp")
    p.add_argument("--no-batch-norm", dest="batch_norm", action="store_false",
                   help="mlp without batch norm: dense + relu only (the matmul-bound case)")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], default="NHWC")
    p.add_argument("--algorithm", choices=["explicit", "implicit"], default=DEFAULT_ALGORITHM,
                   help="conv2d algorithm (default: %(default)s, as jaxbp train)")
    p.add_argument("--rounds", type=_positive_int, default=20)
    p.add_argument("--no-flax", action="store_true", help="skip the Flax NNX baseline")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_bench)


def _bench(a):
    import json
    from jaxbp import bench
    results = bench.run(a.model, a.batch_size, a.dtype, a.width, a.rounds, a.layout, a.algorithm,
                        flax=not a.no_flax, batch_norm=a.batch_norm)
    if a.json:
        print(json.dumps({"model": a.model, "batch_size": a.batch_size, "dtype": a.dtype,
                          "layout": a.layout, "algorithm": a.algorithm, "batch_norm": a.batch_norm,
                          "results": results}, indent=2))
    else:
        extra = f", {a.layout}, {a.algorithm}" if a.model == "cnn" else \
            f", width {a.width}" + ("" if a.batch_norm else ", no batch norm")
        print(bench.table(results, a.model, a.batch_size, a.dtype, extra))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.func(args)
    from jaxbp.checkpoint import CheckpointError
    from jaxbp.data import DataError
    from jaxbp.train import NonFiniteError
    try:
        return args.func(args)
    except _UsageError as e:
        print(f"jaxbp: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DataError, CheckpointError, NonFiniteError, ValueError, OSError) as e:
        print(f"jaxbp: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("jaxbp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
