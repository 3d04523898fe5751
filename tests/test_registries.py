"""A model and a data set added each in one place (the registries of
jaxbp.layers and jaxbp.data.registry) reach everything that reads them: the
command line's choices, Config, bench, gradcheck, training and evaluation."""
import numpy as np
import pytest

from jaxbp import cli, data, layers, train
from jaxbp.data import builtin
from jaxbp.tools import bench, gradcheck
from jaxbp.train.evaluation import class_names

COLOURS = ("red", "green", "blue")


def _five_pools(num_classes, *, gradients, width, layout, algorithm):
    """A VGG-like stack: five conv + max-pool blocks take 32×32 images to 1×1
    (8×8 digits would be gone after three)."""
    ops = layers.namespace(gradients)
    axis = 3 if layout == "NHWC" else 1
    body = [layers.Transpose((0, 2, 3, 1))] if layout == "NHWC" else []
    for _ in range(5):
        body += [layers.Conv2D(width, 3, 1, "SAME", ops=ops, layout=layout, algorithm=algorithm, bias=False),
                 layers.BatchNorm(ops=ops, axis=axis), layers.Activation("relu", ops=ops),
                 layers.MaxPool2D(2, ops=ops, layout=layout)]
    return layers.serial(*body, layers.Flatten(), layers.Dense(num_classes, ops=ops, init="glorot"))


def _read_colours(directory, seed):
    """The data set's reader: its one file, an .npz of the four arrays."""
    with np.load(f"{directory}/colours.npz") as f:
        return data.Dataset(f["x_train"], f["y_train"], f["x_test"], f["y_test"], len(COLOURS))


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """The one place each is added (monkeypatch removes them after the test)."""
    monkeypatch.setitem(layers.MODELS, "five_pools", layers.Model(
        _five_pools, dict(width=4, layout="NHWC", algorithm="implicit"), (3, 32, 32), ("colours",)))
    monkeypatch.setattr(data.registry, "REGISTRY", dict(data.REGISTRY))
    monkeypatch.setattr(data, "REGISTRY", data.registry.REGISTRY)
    data.register(data.DataSet("colours", _read_colours, (3, 32, 32), COLOURS, shift=0, flip=True))
    ds = builtin.synthetic(48, 16, (3, 32, 32), len(COLOURS), seed=1)
    np.savez(tmp_path / "colours.npz", **ds._asdict())
    return tmp_path


def test_the_command_line_and_config_accept_them(registered):
    a = cli.build_parser().parse_args(["train", "--model", "five_pools", "--data", "colours", "--width", "2"])
    assert (a.model, a.data, a.width) == ("five_pools", "colours", 2)
    cfg = train.Config(model="five_pools", data="colours", width=2).validate()
    assert cfg.model_options() == {"width": 2, "layout": "NHWC", "algorithm": "implicit"}
    assert cfg.augmentation() == (0, True)        # the data set's entry, not a "cifar10" test
    with pytest.raises(ValueError, match="model 'five_pools' has no option dropout"):
        train.Config(model="five_pools", dropout=0.1).validate()
    assert class_names("colours", 3) == COLOURS


@pytest.mark.slow   # compiles the model's step by the rules and by the twins
def test_bench_times_it_on_its_own_input_shape(registered):
    results = bench.run("five_pools", 4, rounds=1, width=2)
    assert [r["candidate"] for r in results] == ["jaxbp custom", "jaxbp autodiff"]
    assert all(r["step_ms"] > 0 for r in results)
    assert bench.batch(4, "five_pools")[0].shape == (4, 3, 32, 32)


@pytest.mark.slow   # compiles the model's step by the rules and by the twins
def test_gradcheck_checks_it_on_its_own_input_shape(registered, capsys):
    assert gradcheck.main("five_pools", "float64", ops=["relu"])
    out = capsys.readouterr().out
    assert "model five_pools, every parameter" in out and "conv5.w" in out and "PASS" in out


@pytest.mark.slow   # training and evaluation runs: the end-to-end lane
def test_training_and_evaluation_run_it(registered):
    run = registered / "run"
    cfg = train.Config(model="five_pools", data="colours", data_dir=str(registered), epochs=1, batch_size=16,
                       eval_batch_size=16, width=2, run_dir=str(run))
    result = train.fit(cfg, quiet=True)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    r = train.evaluate_run(str(run))
    assert r.confusion.shape == (3, 3) and int(r.confusion.sum()) == 16


def test_a_reader_returning_other_channels_than_its_entry_is_refused(registered):
    data.register(data.DataSet("grey", _read_colours, (1, 32, 32), COLOURS))
    with pytest.raises(data.DataError, match=r"data set 'grey': its reader returned train images of shape "
                                             r"\(48, 3, 32, 32\), expected \(N, 1, H, W\)"):
        data.load("grey", str(registered))


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="data set 'mnist' is already registered"):
        data.register(data.get("mnist"))
    with pytest.raises(ValueError, match="model 'cnn' is already registered"):
        layers.register_model("cnn", layers.MODELS["cnn"])
    with pytest.raises(ValueError, match=r"unknown options \['depth'\]"):
        layers.register_model("deep", layers.Model(lambda k, **o: None, dict(depth=3), (1, 8, 8)))
