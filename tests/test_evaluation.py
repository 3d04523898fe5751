"""A ResNet-20 trained on CIFAR-10-format files, then `jaxbp evaluate`: the
newest checkpoint in inference mode, its confusion matrix."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxbp import cli, train
from jaxbp.train import checkpoint
from bad_inputs import FAULTS
from helpers import command_env, write_cifar_dir


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """ResNet-20 on tiny CIFAR-10 files in the published format (40 training
    images, 10 test images), two epochs, with augmentation (crops and flips)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_dir(root, n_per_batch=8, n_test=10)
    cfg = train.Config(model="resnet20", data="cifar10", data_dir=str(root), epochs=2, batch_size=8,
                       lr=1e-2, run_dir=str(root / "run"))
    result = train.fit(cfg, quiet=True)
    return cfg, result


@pytest.mark.slow
def test_resnet20_trains_on_cifar10_files(resnet_run):
    cfg, result = resnet_run
    assert cfg.augmentation() == (4, True)
    assert len(result.history) == 2 and all(np.isfinite(result.step_losses))
    assert result.state.step == 10 and len(checkpoint.list_checkpoints(cfg.run_dir + "/checkpoints")) == 2


@pytest.mark.slow
def test_evaluate_reports_the_newest_checkpoint_in_inference_mode(resnet_run):
    cfg, result = resnet_run
    r = train.evaluate_run(cfg.run_dir, batch_size=3)  # batches of 3: batch statistics would differ
    last = result.history[-1]
    assert (r.epoch, r.step) == (2, 10) and r.checkpoint.endswith("ckpt-000000010")
    np.testing.assert_allclose(r.loss, last["test_loss"], rtol=1e-5)
    assert r.accuracy == last["test_accuracy"]
    assert r.confusion.shape == (10, 10) and r.confusion.sum() == 10
    assert np.trace(r.confusion) == round(10 * r.accuracy)
    saved = json.loads(open(cfg.run_dir + "/evaluation.json").read())
    assert saved["confusion"] == r.confusion.tolist() and saved["classes"][0] == "airplane"
    with open(cfg.run_dir + "/confusion.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_evaluate_command(resnet_run, capsys):
    cfg, _ = resnet_run
    assert cli.main(["evaluate", "--run-dir", cfg.run_dir]) == 0
    out = capsys.readouterr().out
    assert "ckpt-000000010 (epoch 2, step 10), inference mode" in out and "(10 examples)" in out
    assert "confusion.png" in out


def test_evaluate_without_a_checkpoint_says_so(tmp_path, capsys):
    import dataclasses
    from jaxbp.train import rundir
    rundir.write_json(str(tmp_path / "config.json"), dataclasses.asdict(train.Config(run_dir=str(tmp_path))))
    assert cli.main(["evaluate", "--run-dir", str(tmp_path)]) == 1
    assert f"jaxbp: error: no checkpoint in {tmp_path}/checkpoints" in capsys.readouterr().err


@pytest.mark.slow   # training, then a jaxbp process
def test_a_skipped_checkpoint_is_one_jaxbp_line(tmp_path):
    """A corrupt newest checkpoint falls back to the older one with jaxbp's one-line
    warning (was Python's UserWarning with its source line)."""
    from jaxbp import data
    run = tmp_path / "run"
    ds = data.load_digits()
    train.fit(train.Config(model="mlp", epochs=2, run_dir=str(run)), dataset=ds, quiet=True)
    newest = checkpoint.list_checkpoints(str(run / "checkpoints"))[-1]
    with open(f"{newest}/arrays.npz", "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    # A process of its own: pytest records warnings instead of printing them.
    r = subprocess.run([sys.executable, "-m", "jaxbp.cli", "evaluate", "--run-dir", str(run)], capture_output=True,
                       text=True, env=command_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(FAULTS["checkpoint_skipped"][1], err[0]), err
    assert issubclass(checkpoint.CheckpointMismatch, checkpoint.CheckpointError)
