"""Bad inputs the tests try, one row each: the ops' (tests/test_errors.py) and
the command line's (tests/test_cli.py). tests/error_table.py turns both into
docs/errors.md, so the table and the tests cannot drift apart."""
import os

import jax
import jax.numpy as jnp

import jaxbp
from helpers import write_mnist_dir

f32 = jnp.float32
x4, w4, b4 = jnp.ones((2, 3, 8, 8), f32), jnp.ones((4, 3, 3, 3), f32), jnp.ones(4, f32)
x2, w2, b2 = jnp.ones((5, 4), f32), jnp.ones((3, 4), f32), jnp.ones(3, f32)

OP_CASES = {
    "conv_channel_mismatch": (lambda: jaxbp.conv2d(x4, jnp.ones((4, 2, 3, 3)), b4), ValueError,
                              r"w must have 3 input channels .* x of shape \(2, 3, 8, 8\).* got w of shape \(4, 2, 3, 3\)"),
    "conv_x_rank": (lambda: jaxbp.conv2d(jnp.ones((3, 8, 8)), w4, b4), ValueError,
                    r"x must have rank 4 \(N C H W\), got shape \(3, 8, 8\)"),
    "conv_w_rank": (lambda: jaxbp.conv2d(x4, jnp.ones((4, 3, 3)), b4), ValueError,
                    r"w must have rank 4 \(O I FH FW\), got shape \(4, 3, 3\)"),
    "conv_stride_zero": (lambda: jaxbp.conv2d(x4, w4, b4, stride=0), ValueError, r"stride must be >= 1, got 0"),
    "conv_stride_negative": (lambda: jaxbp.conv2d(x4, w4, b4, stride=(1, -2)), ValueError,
                             r"stride must be >= 1, got \(1, -2\)"),
    "conv_stride_float": (lambda: jaxbp.conv2d(x4, w4, b4, stride=1.5), TypeError,
                          r"stride must be an int or a pair of ints, got 1.5"),
    "conv_padding_negative": (lambda: jaxbp.conv2d(x4, w4, b4, padding=-1), ValueError,
                              r"padding must be >= 0, got -1"),
    "conv_padding_unknown": (lambda: jaxbp.conv2d(x4, w4, b4, padding="FULL"), ValueError,
                             r"padding must be an int, a pair, 'SAME' or 'VALID', got 'FULL'"),
    "conv_kernel_too_large": (lambda: jaxbp.conv2d(x4, jnp.ones((4, 3, 11, 3)), b4, padding=1), ValueError,
                              r"kernel of size \(11, 3\) is larger than the padded input \(10, 10\)"),
    "conv_bias_size": (lambda: jaxbp.conv2d(x4, w4, jnp.ones(5)), ValueError,
                       r"b must have shape \(4,\) \(one entry per output channel of w\), got \(5,\)"),
    "conv_integer_x": (lambda: jaxbp.conv2d(jnp.ones((2, 3, 8, 8), jnp.int32), w4, b4), TypeError,
                       r"x must have a floating dtype, got int32"),
    "conv_boolean_w": (lambda: jaxbp.conv2d(x4, jnp.ones((4, 3, 3, 3), bool), b4), TypeError,
                       r"w must have a floating dtype, got bool"),
    "conv_layout": (lambda: jaxbp.conv2d(x4, w4, b4, layout="CHWN"), ValueError,
                    r"layout must be 'NCHW' or 'NHWC', got 'CHWN'"),
    "conv_algorithm": (lambda: jaxbp.conv2d(x4, w4, b4, algorithm="fft"), ValueError,
                       r"algorithm must be one of 'explicit', 'implicit', 'winograd', 'auto', or a pair "
                       r"\(forward's, backward's\) of 'explicit', 'implicit', 'winograd'; got 'fft'"),
    "conv_algorithm_pair": (lambda: jaxbp.conv2d(x4, w4, b4, algorithm=("explicit", "auto")), ValueError,
                            r"or a pair \(forward's, backward's\) of 'explicit', 'implicit', 'winograd'; "
                            r"got \('explicit', 'auto'\)"),
    "conv_winograd_stride": (lambda: jaxbp.conv2d(x4, w4, b4, stride=2, algorithm="winograd"), ValueError,
                             r"algorithm='winograd': Winograd's computes 3×3 convolutions with stride 1, "
                             r"dilation 1 and groups 1; got w of shape \(4, 3, 3, 3\) \(kernel \(3, 3\)\), stride \(2, 2\)"),
    "conv_dilation_zero": (lambda: jaxbp.conv2d(x4, w4, b4, dilation=(1, 0)), ValueError,
                           r"dilation must be >= 1, got \(1, 0\)"),
    "conv_dilated_kernel_too_large": (lambda: jaxbp.conv2d(x4, w4, b4, dilation=4), ValueError,
                                      r"kernel of size \(9, 9\) is larger than the padded input \(8, 8\)"),
    "conv_groups_not_dividing": (lambda: jaxbp.conv2d(x4, jnp.ones((4, 1, 3, 3)), b4, groups=2), ValueError,
                                 r"groups=2 must divide the input channels of x \(shape \(2, 3, 8, 8\), NCHW\)"),
    "conv_groups_channels": (lambda: jaxbp.conv2d(jnp.ones((2, 4, 8, 8)), w4, b4, groups=2), ValueError,
                             r"w must have 4 / groups = 2 input channels .* got w of shape \(4, 3, 3, 3\)"),
    "conv_groups_float": (lambda: jaxbp.conv2d(x4, w4, b4, groups=1.0), TypeError, r"groups must be an int, got 1.0"),
    "dense_in_mismatch": (lambda: jaxbp.dense(x2, jnp.ones((3, 5)), b2), ValueError,
                          r"w must have shape \(out, 4\) to match x of shape \(5, 4\), got \(3, 5\)"),
    "dense_x_scalar": (lambda: jaxbp.dense(jnp.ones(()), w2, b2), ValueError,
                       r"x must have at least one axis \(\.\.\., in\), got shape \(\)"),
    "dense_bias_size": (lambda: jaxbp.dense(x2, w2, jnp.ones(4)), ValueError,
                        r"b must have shape \(3,\) .*got \(4,\)"),
    "dense_integer_x": (lambda: jaxbp.dense(jnp.ones((5, 4), jnp.int8), w2, b2), TypeError,
                        r"x must have a floating dtype, got int8"),
    "pool_window_too_large": (lambda: jaxbp.max_pool2d(x4, 9), ValueError,
                              r"window of size \(9, 9\) is larger than the padded input \(8, 8\)"),
    "pool_stride_zero": (lambda: jaxbp.avg_pool2d(x4, 2, stride=0), ValueError, r"stride must be >= 1, got 0"),
    "pool_padding_negative": (lambda: jaxbp.avg_pool2d(x4, 2, padding=(0, -1)), ValueError,
                              r"padding must be >= 0, got \(0, -1\)"),
    "max_pool_padding_over_half_window": (lambda: jaxbp.max_pool2d(x4, 2, padding=2), ValueError,
                                          r"padding \(\(2, 2\), \(2, 2\)\) must be at most half the window \(2, 2\)"),
    "avg_pool_padding_over_half_window": (lambda: jaxbp.avg_pool2d(x4, 3, padding=((0, 2), (1, 1))), ValueError,
                                          r"padding \(\(0, 2\), \(1, 1\)\) must be at most half the window \(3, 3\)"),
    "max_pool_empty_input": (lambda: jaxbp.max_pool2d(jnp.ones((2, 3, 0, 0)), 2, stride=1, padding=1), ValueError,
                             r"x has an empty spatial size \(0, 0\) \(shape \(2, 3, 0, 0\), NCHW\)"),
    "avg_pool_empty_input": (lambda: jaxbp.avg_pool2d(jnp.ones((2, 4, 0, 3)), 1, layout="NHWC"), ValueError,
                             r"x has an empty spatial size \(4, 0\)"),
    "pool_x_rank": (lambda: jaxbp.max_pool2d(x2, 2), ValueError, r"x must have rank 4 \(N C H W\), got shape \(5, 4\)"),
    "pool_integer_x": (lambda: jaxbp.avg_pool2d(jnp.ones((1, 1, 4, 4), jnp.int32), 2), TypeError,
                       r"x must have a floating dtype, got int32"),
    "batch_norm_gamma_size": (lambda: jaxbp.batch_norm(x4, jnp.ones(4), jnp.ones(3)), ValueError,
                              r"gamma must have shape \(3,\) \(one entry per feature of x \(2, 3, 8, 8\)\), got \(4,\)"),
    "batch_norm_x_rank": (lambda: jaxbp.batch_norm(jnp.ones(3), jnp.ones(3), jnp.ones(3)), ValueError,
                          r"x must have rank 2 or 3 or 4 or 5 \(N, D or N, C with up to three spatial axes\), "
                          r"got shape \(3,\)"),
    "batch_norm_eval_var_size": (lambda: jaxbp.batch_norm_eval(x4, b4[:3], b4[:3], b4[:3], b4), ValueError,
                                 r"var must have shape \(3,\) \(one entry per feature of x \(2, 3, 8, 8\)\), "
                                 r"got \(4,\)"),
    "batch_norm_integer_x": (lambda: jaxbp.batch_norm(jnp.ones((4, 3), jnp.int32), jnp.ones(3), jnp.ones(3)),
                             TypeError, r"x must have a floating dtype, got int32"),
    "batch_norm_eps_array": (lambda: jaxbp.batch_norm(x2, jnp.ones(4), jnp.ones(4), eps=jnp.array(1e-5)),
                             TypeError, r"eps must be a Python number, got .*Array"),
    "xent_targets_shape": (lambda: jaxbp.softmax_cross_entropy(x2, jnp.ones((5, 3))), ValueError,
                           r"targets must have shape \(5, 4\) \(like logits, or \(N,\) integer class ids\), got \(5, 3\)"),
    "xent_labels_shape": (lambda: jaxbp.softmax_cross_entropy(x2, jnp.zeros((4,), jnp.int32)), ValueError,
                          r"targets must have shape \(5,\) \(integer class ids, one per row of logits \(5, 4\)\), got \(4,\)"),
    "xent_logits_rank": (lambda: jaxbp.softmax_cross_entropy(jnp.ones(4), jnp.ones(4)), ValueError,
                         r"logits must have rank 2 \(N, K\), got shape \(4,\)"),
    "xent_integer_logits": (lambda: jaxbp.softmax_cross_entropy(jnp.ones((5, 4), jnp.int32), x2), TypeError,
                            r"logits must have a floating dtype, got int32"),
    "xent_ignore_index_with_soft_targets": (lambda: jaxbp.softmax_cross_entropy(x2, x2, ignore_index=-100),
                                            ValueError, r"ignore_index applies to integer class ids; targets are "
                                            r"float32 of shape \(5, 4\)"),
    "xent_ignore_index_float": (lambda: jaxbp.softmax_cross_entropy(x2, jnp.zeros(5, jnp.int32), ignore_index=-1.0),
                                TypeError, r"ignore_index must be a Python int or None, got -1.0"),
    "euclidean_target_shape": (lambda: jaxbp.euclidean_loss(x2, jnp.ones((5, 3))), ValueError,
                               r"target must have shape \(5, 4\) \(like pred\), got \(5, 3\)"),
    "mse_boolean_pred": (lambda: jaxbp.mse(jnp.ones((5, 4), bool), x2), TypeError,
                         r"pred must have a floating dtype, got bool"),
    "leaky_relu_slope_array": (lambda: jaxbp.leaky_relu(x2, jnp.array(0.1)), TypeError,
                               r"negative_slope must be a Python number"),
    "relu_integer": (lambda: jaxbp.relu(jnp.arange(3)), TypeError, r"z must have a floating dtype, got int"),
    "relu_keep_unknown": (lambda: jaxbp.relu(x2, keep="bits"), ValueError,
                          r"keep must be one of 'mask', 'output'; got 'bits'"),
    "sigmoid_integer": (lambda: jaxbp.sigmoid(jnp.arange(3)), TypeError, r"z must have a floating dtype, got int"),
    "tanh_no_array": (lambda: jaxbp.tanh(0.5), TypeError, r"z must be an array, got float"),
    "gelu_approximate_string": (lambda: jaxbp.gelu(x2, approximate="tanh"), TypeError,
                                r"approximate must be a Python bool, got 'tanh'"),
    "silu_integer": (lambda: jaxbp.silu(jnp.arange(3)), TypeError, r"z must have a floating dtype, got int"),
    "softmax_axis_out_of_range": (lambda: jaxbp.softmax(x2, axis=2), ValueError,
                                  r"axis must be in \[-2, 2\) for x of shape \(5, 4\), got 2"),
    "log_softmax_axis_float": (lambda: jaxbp.log_softmax(x2, axis=1.0), TypeError, r"axis must be an int, got 1.0"),
    "layer_norm_gamma_size": (lambda: jaxbp.layer_norm(x2, jnp.ones(5), jnp.ones(4)), ValueError,
                              r"gamma must have shape \(4,\) \(one entry per feature of x \(5, 4\) along axis 1\), "
                              r"got \(5,\)"),
    "dropout_rate_one": (lambda: jaxbp.dropout(x2, 1.0, jax.random.key(0)), ValueError,
                         r"rate must be in \[0, 1\), got 1.0"),
    "dropout_key_not_a_key": (lambda: jaxbp.dropout(x2, 0.5, 0), TypeError, r"key must be a JAX PRNG key, got int"),
    "relu_list": (lambda: jaxbp.relu([1.0, 2.0]), TypeError, r"z must be an array, got list"),
    # Empty reductions: jaxbp's message, not XLA's "zero-size array to reduction operation".
    "softmax_empty_axis": (lambda: jaxbp.softmax(jnp.ones((3, 0))), ValueError,
                           r"z must have at least one entry along axis 1, got shape \(3, 0\)"),
    "log_softmax_empty_axis": (lambda: jaxbp.log_softmax(jnp.ones((0, 2)), axis=0), ValueError,
                               r"z must have at least one entry along axis 0, got shape \(0, 2\)"),
    "xent_no_classes": (lambda: jaxbp.softmax_cross_entropy(jnp.ones((3, 0)), jnp.zeros(3, jnp.int32)),
                        ValueError, r"logits must have at least one class \(K >= 1\), got shape \(3, 0\)"),
    "batch_norm_empty_batch": (lambda: jaxbp.batch_norm(jnp.ones((0, 3)), jnp.ones(3), jnp.ones(3)), ValueError,
                               r"x must have at least one position per feature to take batch statistics, "
                               r"got shape \(0, 3\)"),
    "layer_norm_no_features": (lambda: jaxbp.layer_norm(jnp.ones((3, 0)), jnp.ones(0), jnp.ones(0)), ValueError,
                               r"x must have at least one feature along axis 1, got shape \(3, 0\)"),
}



@__import__("contextlib").contextmanager
def restored_environ():
    """The environment, and the JAX settings an in-process ``cli.main`` changes
    (``jaxbp train`` turns JAX's persistent compilation cache on), as they were:
    the rest of the test worker must not compile into a cache."""
    import jax
    saved = dict(os.environ)
    settings = {k: getattr(jax.config, k) for k in JAX_SETTINGS}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for k, v in settings.items():
            jax.config.update(k, v)


JAX_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs", "jax_debug_nans")


_HELD = []   # lock files held by the cases (as another process would hold them)


def cli_error_cases(workdir):
    """name -> (argument factory, exit code, message regex); the factory writes any
    files it needs and may set environment variables (run it inside :func:`restored_environ`)."""
    import numpy as np
    from jaxbp.train import checkpoint

    def corrupt_idx():
        d = os.path.join(workdir, "idx")
        os.makedirs(d, exist_ok=True)
        write_mnist_dir(__import__("pathlib").Path(d))
        path = os.path.join(d, "train-images-idx3-ubyte")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 7)
        return ["train", "--data", "mnist", "--data-dir", d]

    def corrupt_checkpoint():
        import dataclasses
        from jaxbp import train
        from jaxbp.train import rundir
        run = os.path.join(workdir, "corrupt_run")
        saved = checkpoint.save(os.path.join(run, "checkpoints"), 3, {"w": np.ones(3)})
        rundir.write_json(os.path.join(run, "config.json"), dataclasses.asdict(train.Config(run_dir=run)))
        with open(os.path.join(saved, "arrays.npz"), "ab") as f:
            f.write(b"x")
        return ["train", "--run-dir", run, "--resume"]

    def a_run():
        """A run directory as a finished run leaves it (config.json, metrics)."""
        import dataclasses
        from jaxbp import train
        from jaxbp.train import rundir
        run = os.path.join(workdir, "a_run")
        os.makedirs(run, exist_ok=True)
        rundir.write_json(os.path.join(run, "config.json"), dataclasses.asdict(train.Config(run_dir=run)))
        rundir.write_metrics(run, [])
        return run

    def offline():
        """No file cached, the server unreachable (port 9: nothing listens). Sets
        environment variables; the runners restore the environment."""
        os.environ["JAXBP_DATA"] = os.path.join(workdir, "cache")
        os.environ["JAXBP_DATA_MIRROR"] = "http://127.0.0.1:9"
        return ["train", "--data", "mnist", "--run-dir", os.path.join(workdir, "offline_run")]

    def held(resume):
        """A run directory whose lock another process holds (a fixed holder
        written in the lock file, so that the message reads the same each time)."""
        import fcntl
        import json
        run = a_run() if resume else os.path.join(workdir, "held_run")
        os.makedirs(run, exist_ok=True)
        path = os.path.join(run, ".lock")
        with open(path, "w") as f:
            json.dump({"pid": 4242, "host": "node7", "since": "2026-12-02T10:00:00"}, f)
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)   # released when the test's process ends or the fd is closed
        _HELD.append(fd)
        return ["train", "--run-dir", run] + (["--resume"] if resume else [])

    def mnist_dir(edit):
        """Small MNIST files in a directory, then ``edit(directory)``."""
        d = os.path.join(workdir, "mnist_" + edit.__name__)
        os.makedirs(d, exist_ok=True)
        write_mnist_dir(__import__("pathlib").Path(d))
        edit(d)
        return ["train", "--data", "mnist", "--data-dir", d, "--run-dir", os.path.join(workdir, "never_created")]

    def label_200(d):
        path = os.path.join(d, "train-labels-idx1-ubyte")
        raw = bytearray(open(path, "rb").read())
        raw[8 + 3] = 200
        open(path, "wb").write(bytes(raw))

    def fifo(d):
        os.remove(os.path.join(d, "t10k-images-idx3-ubyte"))
        os.mkfifo(os.path.join(d, "t10k-images-idx3-ubyte"))

    def gzip_longer(d):
        import gzip
        path = os.path.join(d, "train-images-idx3-ubyte")
        raw = open(path, "rb").read()
        os.remove(path)
        with gzip.open(path + ".gz", "wb") as f:
            f.write(raw + bytes(1 << 20))   # a megabyte of zeros past what the header promises

    def config_without_lr():
        import json
        run = a_run()
        path = os.path.join(run, "config.json")
        saved = json.load(open(path))
        del saved["lr"]
        json.dump(saved, open(path, "w"))
        return ["train", "--run-dir", run, "--resume"]

    def edited_checkpoint():
        import json
        run = a_run()
        path = checkpoint.save(os.path.join(run, "checkpoints"), 8, {"w": np.ones(3)}, {"epoch": 1})
        meta = json.load(open(os.path.join(path, "meta.json")))
        meta["metadata"]["epoch"] = 0
        json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
        return ["train", "--run-dir", run, "--resume"]

    def run_dir_file():
        path = os.path.join(workdir, "a_file")
        open(path, "w").close()
        return ["train", "--run-dir", path, "--epochs", "1"]

    return {
        "cli_epochs_zero": (lambda: ["train", "--epochs", "0"], 2, "--epochs: expected a positive integer, got '0'"),
        "cli_batch_size_negative": (lambda: ["train", "--batch-size", "-3"], 2,
                                    "--batch-size: expected a positive integer, got '-3'"),
        "cli_lr_zero": (lambda: ["train", "--lr", "0"], 2, "--lr: expected a positive finite number, got '0'"),
        "cli_lr_not_a_number": (lambda: ["train", "--lr", "fast"], 2,
                                "--lr: expected a positive finite number, got 'fast'"),
        "cli_unknown_model": (lambda: ["train", "--model", "resnet"], 2, "--model: invalid choice: 'resnet'"),
        "cli_option_the_model_ignores": (lambda: ["train", "--model", "resnet20", "--width", "8"], 2,
                                         r"--width: --model resnet20 does not read it \(it reads --layout, "
                                         r"--algorithm\); leave it out"),
        "cli_bench_option_the_model_ignores": (lambda: ["bench", "--model", "mlp", "--algorithm", "explicit"], 2,
                                               r"--algorithm: --model mlp does not read it \(it reads --width, "
                                               r"--dropout\); leave it out"),
        "cli_unknown_optimizer": (lambda: ["train", "--optimizer", "lbfgs"], 2, "--optimizer: invalid choice"),
        "cli_unknown_option": (lambda: ["train", "--epochz", "3"], 2, "unrecognized arguments: --epochz"),
        "cli_mnist_offline": (offline, 1, r"could not download train-images-idx3-ubyte.gz for --data mnist from "
                                          r"http://127.0.0.1:9/mnist/train-images-idx3-ubyte.gz"),
        "cli_missing_data_dir": (lambda: ["train", "--data", "mnist", "--data-dir", os.path.join(workdir, "nope")],
                                 1, "data directory .*nope' does not exist"),
        "cli_truncated_idx_file": (corrupt_idx, 1, "train-images-idx3-ubyte is truncated"),
        "cli_resume_missing_run_dir": (lambda: ["train", "--run-dir", os.path.join(workdir, "empty"), "--resume"],
                                       1, "run directory .*empty does not exist: there is no run to resume"),
        "cli_resume_changes_the_run": (lambda: ["train", "--run-dir", a_run(), "--resume", "--lr", "0.01"], 2,
                                       r"lr=0.01 \(--lr 0.01\) conflicts with the run in .*a_run, which has lr 0.003 "
                                       r"\(config.json\)"),
        "cli_resume_with_overwrite": (lambda: ["train", "--run-dir", a_run(), "--resume", "--overwrite"], 2,
                                      r"overwrite=True \(--overwrite\) starts a new run; it cannot be combined with resume=True "
                                      r"\(--resume\)"),
        "cli_run_dir_holds_a_run": (lambda: ["train", "--run-dir", a_run(), "--epochs", "1"], 1,
                                    r"run directory .*a_run already holds a run \(config.json, metrics.jsonl\); "
                                    r"choose a new run_dir \(--run-dir\), continue that run \(resume=True, --resume\), "
                                    r"or replace it \(overwrite=True, --overwrite\)"),
        "cli_run_dir_unwritable": (lambda: ["train", "--data", "mnist", "--data-dir", os.path.join(workdir, "nope"),
                                            "--run-dir", os.path.join(run_dir_file()[2], "run")], 1,
                                   "run directory .*a_file/run cannot be written"),
        "cli_devices_more_than_available": (lambda: ["train", "--devices", str(__import__("jax").device_count() + 1)],
                                            2, r"devices \(--devices\) must be at most the \d+ available device\(s\), got \d+"),
        "cli_no_abbreviations": (lambda: ["train", "--debug-n"], 2, "unrecognized arguments: --debug-n"),
        "cli_resume_corrupt_checkpoint": (corrupt_checkpoint, 1, "no usable checkpoint: .* is corrupt"),
        "cli_batch_larger_than_data": (lambda: ["train", "--batch-size", "5000", "--run-dir",
                                                os.path.join(workdir, "big")], 1,
                                       "batch_size 5000 is larger than the training set"),
        "cli_run_dir_is_a_file": (run_dir_file, 1, "run directory .*a_file exists and is not a directory"),
        "cli_run_dir_in_use": (lambda: held(False), 2, r"run directory .*held_run is in use by process 4242 on node7 "
                                                          r"\(since 2026-12-02T10:00:00\): a run directory is written by "
                                                          "one process at a time"),
        "cli_resume_while_the_run_goes_on": (lambda: held(True), 2, r"run directory .*a_run is in use by process 4242"),
        "cli_label_out_of_range": (lambda: mnist_dir(label_200), 1,
                                   r"train-labels-idx1-ubyte: labels must be class ids in \[0, 10\), but 1 are not; "
                                   "the first is index 3: 200"),
        "cli_data_file_is_a_fifo": (lambda: mnist_dir(fifo), 1, r"t10k-images-idx3-ubyte is not a regular file"),
        "cli_gzip_longer_than_its_header": (lambda: mnist_dir(gzip_longer), 1,
                                            r"train-images-idx3-ubyte.gz is longer than its header says: more than "
                                            r"the 376 bytes of shape \(12, 6, 5\)"),
        "cli_config_json_missing_key": (config_without_lr, 1, r"config.json has no 'lr': the run's lr is unknown"),
        "cli_checkpoint_meta_edited": (edited_checkpoint, 1, r"no usable checkpoint: checkpoint .*ckpt-000000008 is "
                                                             r"corrupt: meta.json does not match its checksum"),
        "cli_peer_timeout_zero": (lambda: ["train", "--peer-timeout", "0"], 2,
                                  "--peer-timeout: expected a positive integer, got '0'"),
        "cli_gradcheck_dtype": (lambda: ["gradcheck", "--dtype", "float16"], 2, "--dtype: invalid choice"),
        "cli_gradcheck_module_with_shape": (lambda: ["gradcheck", "--op", "user_rules:", "--shape", "3,4"], 2,
                                            "--op module: checks every op of the module with its example inputs"),
        "cli_gradcheck_no_module": (lambda: ["gradcheck", "--op", ":"], 2, r"--op ':': expected module: "),
        "cli_gradcheck_module_without_ops": (lambda: ["gradcheck", "--op", "helpers:"], 2,
                                             "module 'helpers' defines no @jaxbp.op with example inputs"),
        "cli_bench_batch_size": (lambda: ["bench", "--batch-size", "0"], 2, "--batch-size: expected a positive"),
    }


# Faults met while a run goes on (the tests that cause each are named): what
# happens, the message's pattern (those tests match it) and an example of it.
FAULTS = {
    "run_dir_raced": ("two processes start with one --run-dir (test_faults.py::test_two_processes_racing...)",
                      r"jaxbp: error: run directory .* is in use by process \d+ on .* \(since .*\): a run directory is "
                      r"written by one process at a time; wait for that run to end, or choose another run_dir \(--run-dir\)",
                      "jaxbp: error: run directory runs/a is in use by process 812 on node7 (since 2026-12-02T10:00:00): "
                      "a run directory is written by one process at a time; wait for that run to end, or choose "
                      "another run_dir (--run-dir)"),
    "write_failed": ("a checkpoint or metrics file cannot be written: disk full, file too large, read-only "
                     "(test_faults.py::test_a_failed_write..., ::test_a_file_size_limit...)",
                     r"jaxbp: error: cannot write .*: .*; (the checkpoint .* is intact; once it can be written, resume "
                     r"the run \(resume=True, --resume\)|no checkpoint had been written yet; once it can be written, start "
                     r"the run again \(overwrite=True, --overwrite\))",
                     "jaxbp: error: cannot write runs/a/checkpoints/ckpt-000000008/arrays.npz: No space left on "
                     "device; the checkpoint after epoch 1 (runs/a/checkpoints/ckpt-000000004) is intact; once it "
                     "can be written, resume the run (resume=True, --resume)"),
    "checkpoint_skipped": ("the newest checkpoint does not verify (edited, corrupt, truncated) and an older one does "
                           "(test_faults.py::test_an_edited_checkpoint_epoch...)",
                           r"jaxbp: warning: checkpoint .* is (corrupt|unreadable): .*; trying an older checkpoint",
                           "jaxbp: warning: checkpoint runs/a/checkpoints/ckpt-000000008 is corrupt: meta.json does "
                           "not match its checksum; trying an older checkpoint"),
    "non_finite": ("the loss, gradients or state (running statistics included) stop being finite "
                   "(test_faults.py::test_non_finite...)",
                   r"jaxbp: error: non-finite (loss|gradients|state \(.*\)) at step \d+; (the checkpoint .* is the "
                   r"last good state|no checkpoint was written before it); try a smaller lr \(--lr\), or jax_debug_nans "
                   r"\(--debug-nans\) to locate it",
                   "jaxbp: error: non-finite state (parameters, optimizer state or running statistics) at step 9; "
                   "the checkpoint after epoch 1 (runs/a/checkpoints/ckpt-000000008) is the last good state; try a "
                   "smaller lr (--lr), or jax_debug_nans (--debug-nans) to locate it"),
    "peer_lost": ("a process of a multi-process run dies (test_distributed.py::test_a_killed_process...)",
                  r"jaxbp: error: process \d+ of \d+: the run lost another process \(.*\); newest checkpoint: .*; "
                  r"start every process again with --resume",
                  "jaxbp: error: process 0 of 2: the run lost another process (UNKNOWN: Gloo all-reduce failed: "
                  "... Connection reset by peer); newest checkpoint: runs/a/checkpoints/ckpt-000000064; start every "
                  "process again with --resume"),
    "peers_absent": ("a process of a multi-process run waits for peers that never come "
                     "(test_distributed.py::test_a_process_whose_peers_never_come_says_so)",
                     r"jaxbp: error: process \d+ of \d+: the other processes did not join at .* within \d+ s "
                     r"\(--peer-timeout\): start them, or check the address",
                     "jaxbp: error: process 1 of 2: the other processes did not join at 10.0.0.1:8476 within 60 s "
                     "(--peer-timeout): start them, or check the address"),
}
