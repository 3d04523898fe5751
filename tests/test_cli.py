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


def test_bench_cli_json():
    r = jaxbp("bench", "--model", "mlp", "--batch-size", "32", "--width", "32", "--rounds", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    names = [x["candidate"] for x in out["results"]]
    assert names[:2] == ["jaxbp custom", "jaxbp autodiff"]
    assert all(x["step_ms"] > 0 and x["temp_mib"] >= 0 for x in out["results"])
