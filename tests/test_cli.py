import json
import os
import subprocess
import sys

import pytest

from test_data import write_mnist_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jaxbp(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    return subprocess.run([sys.executable, "-m", "jaxbp.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_default_train_reaches_98_percent_on_digits(tmp_path):
    """The README's main command, exactly as a user runs it (defaults), in a fresh directory."""
    r = jaxbp("train", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = [json.loads(l) for l in (tmp_path / "runs" / "latest" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["test_accuracy"] >= 0.98
    assert "final test accuracy" in r.stdout and "epoch  60/60" in r.stdout


def test_train_output_and_run_directory(tmp_path):
    r = jaxbp("train", "--model", "mlp", "--epochs", "2", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "epoch   1/2  train_loss" in r.stdout and "test_acc" in r.stdout
    assert "epoch 1/2" in r.stderr  # the progress bar
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints", "config.json", "curves.png", "metrics.jsonl"]


def test_train_on_idx_files(tmp_path):
    write_mnist_dir(tmp_path, n_train=64, n_test=16, gz=True)
    r = jaxbp("train", "--data", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "16",
              "--run-dir", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--lr", "-1"], "argument --lr: expected a positive finite number, got '-1'"),
    (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
])
def test_usage_errors_are_one_line_with_exit_2(args, message):
    r = jaxbp("train", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 or r.stderr.count("jaxbp: error") == 1


def test_gradcheck_cli(tmp_path):
    r = jaxbp("gradcheck", "--model", "mlp")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "conv2d NHWC implicit" in r.stdout and "PASS" in r.stdout and "[1]['w']" in r.stdout


@pytest.mark.parametrize("flags", [[], ["--no-batch-norm"]])
def test_bench_cli_json(flags):
    r = jaxbp("bench", "--model", "mlp", "--batch-size", "32", "--width", "32", "--rounds", "2", "--json",
              *flags)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["batch_norm"] == (not flags)
    names = [x["candidate"] for x in out["results"]]
    assert names[:2] == ["jaxbp custom", "jaxbp autodiff"]
    assert all(x["step_ms"] > 0 and x["temp_mib"] >= 0 for x in out["results"])


def cli_error_cases(workdir):
    """name -> (argument factory, exit code, message regex); the factory writes any files it needs."""
    import numpy as np
    from jaxbp import checkpoint

    def corrupt_idx():
        d = os.path.join(workdir, "idx")
        os.makedirs(d, exist_ok=True)
        write_mnist_dir(__import__("pathlib").Path(d))
        path = os.path.join(d, "train-images-idx3-ubyte")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 7)
        return ["train", "--data", "mnist", "--data-dir", d]

    def corrupt_checkpoint():
        run = os.path.join(workdir, "corrupt_run")
        saved = checkpoint.save(os.path.join(run, "checkpoints"), 3, {"w": np.ones(3)})
        with open(os.path.join(saved, "arrays.npz"), "ab") as f:
            f.write(b"x")
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
        "cli_unknown_optimizer": (lambda: ["train", "--optimizer", "lbfgs"], 2, "--optimizer: invalid choice"),
        "cli_unknown_option": (lambda: ["train", "--epochz", "3"], 2, "unrecognized arguments: --epochz"),
        "cli_mnist_without_data_dir": (lambda: ["train", "--data", "mnist"], 2,
                                       "--data mnist needs --data-dir DIR with the four IDX files"),
        "cli_missing_data_dir": (lambda: ["train", "--data", "mnist", "--data-dir", os.path.join(workdir, "nope")],
                                 1, "data directory .*nope' does not exist"),
        "cli_truncated_idx_file": (corrupt_idx, 1, "train-images-idx3-ubyte is truncated"),
        "cli_resume_without_checkpoint": (lambda: ["train", "--run-dir", os.path.join(workdir, "empty"), "--resume"],
                                          1, "no checkpoint in"),
        "cli_resume_corrupt_checkpoint": (corrupt_checkpoint, 1, "no usable checkpoint: .* is corrupt"),
        "cli_batch_larger_than_data": (lambda: ["train", "--batch-size", "5000", "--run-dir",
                                                os.path.join(workdir, "big")], 1,
                                       "batch_size 5000 is larger than the training set"),
        "cli_run_dir_is_a_file": (run_dir_file, 1, "run directory .*a_file exists and is not a directory"),
        "cli_gradcheck_dtype": (lambda: ["gradcheck", "--dtype", "float16"], 2, "--dtype: invalid choice"),
        "cli_bench_batch_size": (lambda: ["bench", "--batch-size", "0"], 2, "--batch-size: expected a positive"),
    }


@pytest.mark.parametrize("name", list(cli_error_cases("/unused")))
def test_cli_error(name, tmp_path, capsys):
    import re
    import warnings
    from jaxbp import cli
    make_args, code, message = cli_error_cases(str(tmp_path))[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = cli.main(make_args())
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [l for l in err.splitlines() if l.startswith("jaxbp: error")]
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert "Traceback" not in err


def test_error_table_in_docs_is_current():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "error_table.py"), "--check"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "docs/errors.md is stale: run python tools/error_table.py"
