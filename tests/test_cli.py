import json
import os
import subprocess
import sys

import jax
import pytest

from bad_inputs import JAX_SETTINGS, cli_error_cases, restored_environ
from helpers import command_env, load_benchmark, running, write_mnist_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jaxbp(*args, cwd=None, **extra_env):
    return subprocess.run([sys.executable, "-m", "jaxbp.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=command_env(**extra_env), timeout=300)


@pytest.mark.slow
def test_default_train_reaches_98_percent_on_digits(tmp_path):
    """The README's main command, exactly as a user runs it (defaults), in a fresh directory."""
    r = jaxbp("train", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = [json.loads(l) for l in (tmp_path / "runs" / "latest" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["test_accuracy"] >= 0.98
    assert "final test accuracy" in r.stdout and "epoch  60/60" in r.stdout


@pytest.mark.slow
def test_train_output_and_run_directory(tmp_path):
    r = jaxbp("train", "--model", "mlp", "--epochs", "2", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "epoch   1/2  train_loss" in r.stdout and "test_acc" in r.stdout
    assert sorted(os.listdir(tmp_path / "run")) == [".lock", "checkpoints", "config.json", "curves.png",
                                                    "metrics.jsonl"]   # .lock: free once the run ended


@pytest.mark.slow   # jaxbp processes
@pytest.mark.parametrize("code", [0, 1, 130])
def test_command_exit_keeps_output_and_exit_handlers(code):
    """The command ends without Python's teardown (cli.run): main's exit code is
    the process's, output still in the buffers of a piped stdout and stderr
    arrives, and exit handlers (temporary files, logging) still run."""
    program = ("import atexit, sys, jaxbp.cli as cli\n"
               "atexit.register(lambda: print('exit handler ran'))\n"
               f"cli.main = lambda: print('buffered out') or print('buffered err', file=sys.stderr) or {code}\n"
               "cli.run()\n"
               "print('not reached')\n")
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert r.returncode == code
    assert r.stdout.splitlines() == ["buffered out", "exit handler ran"] and r.stderr == "buffered err\n"


@pytest.mark.slow   # jaxbp processes
@pytest.mark.parametrize("given", [None, "XLA_PYTHON_CLIENT_PREALLOCATE=true",
                                   "XLA_CLIENT_MEM_FRACTION=.5", "XLA_PYTHON_CLIENT_MEM_FRACTION=.5",
                                   "XLA_PYTHON_CLIENT_ALLOCATOR=platform"])
def test_command_takes_gpu_memory_on_demand_unless_the_user_chose(given):
    """The command sets JAX's XLA_PYTHON_CLIENT_PREALLOCATE=false before JAX starts
    its devices (preallocating 75 % of a GPU cost seconds of a short run); a
    user's own memory setting leaves all of them as they are."""
    from jaxbp.cli import GPU_MEMORY_ENV
    env = {k: v for k, v in os.environ.items() if k not in GPU_MEMORY_ENV}
    env.update([given.split("=")] if given else [])
    program = ("import os, jaxbp.cli as cli\n"
               "cli.main = lambda: print({k: os.environ.get(k) for k in cli.GPU_MEMORY_ENV}) or 0\n"
               "cli.run()\n")
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    expected = {k: None for k in GPU_MEMORY_ENV}
    expected.update([given.split("=")] if given else [("XLA_PYTHON_CLIENT_PREALLOCATE", "false")])
    assert r.stdout.strip() == str(expected)


@pytest.mark.slow
def test_startup_profile_lists_the_commands_calls(tmp_path):
    """benchmarks/startup_profile.py (BENCHMARKS.md's GPU start-up notes) runs a
    whole command under the profiler and lists where its time went."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "startup_profile.py"), "--top", "8", "--",
                        "train", "--model", "mlp", "--epochs", "1", "--run-dir", str(tmp_path / "run"), "--quiet"],
                       capture_output=True, text=True, env=command_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "exited 0" in r.stdout and "interpreter start to profiling" in r.stdout
    assert "by cumulative time" in r.stdout and "by own time" in r.stdout
    assert "(fit)" in r.stdout  # jaxbp.train.loop.fit, among the calls with the most time


@pytest.mark.slow
def test_train_on_idx_files(tmp_path):
    write_mnist_dir(tmp_path, n_train=64, n_test=16, gz=True)
    r = jaxbp("train", "--data", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "16",
              "--run-dir", str(tmp_path / "run"), "--quiet", "--dropout", "0.1")
    assert r.returncode == 0, r.stderr
    # MNIST's recipe replaces the defaults it names; options given still win.
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert (config["width"], config["block"], config["warmup_epochs"]) == (12, "conv-pool-bn-relu", 0.1)
    assert (config["epochs"], config["batch_size"], config["dropout"]) == (1, 16, 0.1)


@pytest.mark.slow   # a jaxbp process per case (cli_error checks the same messages in process)
@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--lr", "-1"], "argument --lr: expected a positive finite number, got '-1'"),
    (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
])
def test_usage_errors_are_one_line_with_exit_2(args, message):
    r = jaxbp("train", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()  # exactly one line, and it is the error
    assert line.startswith("jaxbp: error: ")


@pytest.mark.slow
def test_gradcheck_cli(tmp_path):
    """The command's wiring (every op's problem runs in tests/test_gradcheck.py)."""
    r = jaxbp("gradcheck", "--model", "mlp", "--op", "dense", "--op", "relu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\ndense " in r.stdout and "\nrelu " in r.stdout and "leaky_relu" not in r.stdout
    assert "conv2d" not in r.stdout
    assert "PASS" in r.stdout and "dense1.w" in r.stdout


@pytest.mark.slow   # jaxbp processes
@pytest.mark.parametrize("command", ["jaxbp", "vs_flax"])
def test_bench_json(command):
    """`jaxbp bench`: the twin beside the rules; benchmarks/vs_flax.py: Flax NNX
    too (each of the Flax versions the benchmark declares)."""
    args = ("--model", "mlp", "--batch-size", "32", "--width", "32", "--rounds", "2", "--json")
    baselines = []
    if command == "vs_flax":
        pytest.importorskip("flax")
        baselines = list(load_benchmark("flax_models").BASELINES)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "vs_flax.py"), *args],
                           capture_output=True, text=True, timeout=300)
    else:
        r = jaxbp("bench", *args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["options"] == {"width": 32, "dropout": 0.0}
    names = [x["candidate"] for x in out["results"]]
    assert names == ["jaxbp custom", "jaxbp autodiff"] + baselines
    assert all(x["step_ms"] > 0 and x["temp_mib"] >= 0 for x in out["results"])


@pytest.mark.parametrize("name", list(cli_error_cases("/unused")))
def test_cli_error(name, tmp_path, capsys, monkeypatch):
    """Each bad input: one line, its exit code, and no run directory left
    behind (a failed start left an empty runs/<time>-… and moved runs/latest)."""
    import re
    import warnings
    from jaxbp import cli
    monkeypatch.chdir(tmp_path)   # where runs/ would appear
    make_args, code, message = cli_error_cases(str(tmp_path))[name]
    settings = {k: getattr(jax.config, k) for k in JAX_SETTINGS}
    with warnings.catch_warnings(), restored_environ():
        warnings.simplefilter("ignore")
        try:
            rc = cli.main(make_args())
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [l for l in err.splitlines() if l.startswith("jaxbp: error")]
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert {k: getattr(jax.config, k) for k in JAX_SETTINGS} == settings   # the worker's JAX as it was
    assert "Traceback" not in err
    assert all(l.startswith(("jaxbp: ", "downloading ")) for l in err.splitlines()), err   # one line, no page
    assert not (tmp_path / "runs").exists() and not (tmp_path / "never_created").exists()


def test_error_table_in_docs_is_current():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "error_table.py"), "--check"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "docs/errors.md is stale: run python tests/error_table.py"


@pytest.mark.slow
def test_two_runs_in_one_directory_never_destroy_each_other(tmp_path):
    """The data-loss sequence: a second run in a used directory is refused (the
    first run's checkpoints stay), and --resume continues the first run."""
    run = str(tmp_path / "a")
    fast = ["--model", "mlp", "--data", "synthetic", "--quiet"]
    first = jaxbp("train", *fast, "--epochs", "3", "--run-dir", run)
    assert first.returncode == 0, first.stderr
    before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    second = jaxbp("train", *fast, "--epochs", "1", "--run-dir", run, "--seed", "5")
    assert second.returncode == 1 and "already holds a run" in second.stderr
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == before
    resumed = jaxbp("train", "--run-dir", run, "--resume", "--epochs", "5", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    steps = [r["step"] for r in records]
    assert steps == [steps[0] * (i + 1) for i in range(5)]  # one run, consecutive steps
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["seed"] == 0 and config["epochs"] == 5 and config["data"] == "synthetic"
    replaced = jaxbp("train", *fast, "--epochs", "1", "--run-dir", run, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert len(open(os.path.join(run, "metrics.jsonl")).readlines()) == 1


@pytest.mark.slow
def test_default_run_directory_is_new_per_run_and_latest_points_at_it(tmp_path):
    """Also: the second run compiles nothing (JAX's persistent compilation cache)."""
    fast = ["train", "--model", "mlp", "--data", "synthetic", "--epochs", "1", "--quiet"]
    cache = tmp_path / "xla"
    entries = lambda: sorted(p.name for p in cache.iterdir() if not p.name.endswith("-atime"))
    every = dict(JAXBP_COMPILATION_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    a = jaxbp(*fast, cwd=tmp_path, **every)
    compiled = entries()
    b = jaxbp(*fast, "--seed", "1", cwd=tmp_path, **every)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert any("train_step" in e for e in compiled) and entries() == compiled
    runs = sorted(p for p in os.listdir(tmp_path / "runs") if p != "latest")
    assert len(runs) == 2 and all(p.endswith("-mlp-synthetic") for p in runs)
    assert os.readlink(tmp_path / "runs" / "latest") == runs[1]
    assert f"run directory: runs/{runs[1]}" in b.stdout and "final test accuracy" in b.stdout  # --quiet too
    resumed = jaxbp("train", "--resume", "--epochs", "2", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.load(open(tmp_path / "runs" / runs[1] / "config.json"))["seed"] == 1


@pytest.mark.slow
def test_output_redirected_has_epoch_lines_and_no_progress_bar(tmp_path):
    r = jaxbp("train", "--model", "mlp", "--data", "synthetic", "--epochs", "2", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\r" not in r.stdout and "it/s" not in r.stderr
    assert r.stdout.count("train_loss") == 2


@pytest.mark.slow   # jaxbp processes
def test_version_help_and_debug_after_the_subcommand(tmp_path):
    from importlib.metadata import version

    import jaxbp as package
    assert jaxbp("--version").stdout.strip() == f"jaxbp {version('jaxbp')}" == f"jaxbp {package.__version__}"
    from jaxbp import cli
    parser = cli.build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0].choices
    for name, sub in subparsers.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help line"
            if action.nargs != 0 and action.default not in (None, "==SUPPRESS=="):
                # (argparse may wrap a line after a hyphen of a default: "conv-bn- relu-pool")
                assert f"(default: {action.default})" in " ".join(text.split()).replace("- ", "-"), \
                    (name, action.dest)
    r = jaxbp("train", "--epochs", "0", "--debug")  # --debug after the subcommand: the traceback
    assert r.returncode == 2 and "--epochs: expected a positive integer" in r.stderr
    r = jaxbp("train", "--data", "mnist", "--data-dir", str(tmp_path / "nope"), "--run-dir",
              str(tmp_path / "r"), "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "DataError" in r.stderr


@pytest.mark.slow
def test_ctrl_c_says_what_was_saved_and_the_command_that_resumes(tmp_path):
    import signal
    import time
    run = str(tmp_path / "r")
    env = command_env()
    # Ctrl-C as at a terminal: a test runner started in the background ignores
    # SIGINT and its children inherit that, so the child restores Python's handler.
    ctrl_c = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "sys.argv[0] = 'jaxbp'; runpy.run_module('jaxbp.cli', run_name='__main__')")
    with running([sys.executable, "-c", ctrl_c, "train", "--model", "mlp", "--data", "synthetic",
                  "--epochs", "200", "--run-dir", run, "--quiet"],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as (proc,):
        deadline = time.time() + 120

        def epochs_recorded():  # metrics.jsonl gets its line after the epoch's checkpoint is complete
            try:
                with open(os.path.join(run, "metrics.jsonl")) as f:
                    return len(f.read().splitlines())
            except FileNotFoundError:
                return 0
        # Not the checkpoints/ folder appearing: it is made as the first save begins,
        # and a Ctrl-C during that save (its fsyncs, on a loaded machine) finds none yet.
        while not epochs_recorded() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"resume with: jaxbp train --run-dir {run} --resume" in err and "saved: the checkpoint after epoch" in err
    assert "Traceback" not in err
    import re
    done = int(re.search(r"checkpoint after epoch (\d+)", err).group(1))
    again = jaxbp("train", "--run-dir", run, "--resume", "--epochs", str(done + 1), "--quiet")
    assert again.returncode == 0, again.stderr
    assert [json.loads(l)["epoch"] for l in open(os.path.join(run, "metrics.jsonl"))] == list(range(1, done + 2))


@pytest.mark.slow
def test_non_finite_before_any_checkpoint_says_so(tmp_path):
    r = jaxbp("train", "--model", "mlp", "--data", "synthetic", "--optimizer", "sgd", "--lr", "1e30",
              "--run-dir", str(tmp_path / "r"), "--quiet")
    assert r.returncode == 1
    assert "no checkpoint was written before it" in r.stderr and "last good state" not in r.stderr


def test_the_command_runs_from_a_source_tree_without_package_metadata(monkeypatch, capsys):
    """``PYTHONPATH=. python -m jaxbp.cli`` (no ``pip install``) has no installed
    metadata; building the parser must not need it."""
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", missing)
    from jaxbp import __version__, cli
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"jaxbp {__version__}"


TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
@pytest.mark.parametrize("op, extra, code, words", [
    ("user_rules:my_dense", [], 0, "jaxbp.check user_rules:my_dense: ok"),
    ("user_rules:my_dense_wrong", [], 1, "'w': ×2 everywhere"),
    ("user_rules:my_dense_wrong", ["--dtype", "float32"], 1, "FAIL"),
    ("user_rules:my_tanh", ["--shape", "3,4"], 0, "under shard_map"),
    ("user_rules:my_tanh", [], 2, "declares no example inputs"),
    ("user_rules:nothing", [], 2, "module 'user_rules' has no 'nothing'"),
    ("user_rules:", [], 1, "user_rules: my_dense ok, my_dense_wrong FAILED; not checked (no example inputs): "
                           "my_tanh"),
], ids=["right", "wrong", "wrong float32", "shape", "no example", "missing", "module"])
def test_gradcheck_a_users_op(op, extra, code, words):
    r = jaxbp("gradcheck", "--op", op, *extra, cwd=TESTS)
    assert r.returncode == code, r.stdout + r.stderr
    assert words in r.stdout + r.stderr
    if code == 2:
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_gradcheck_float32_says_which_is_closer_to_the_truth():
    r = jaxbp("gradcheck", "--dtype", "float32", "--model", "mlp", "--op", "batch_norm")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "float32 gradients against the float64 truth" in r.stdout
    assert "rule err" in r.stdout and "twin err" in r.stdout and "closer" in r.stdout
    assert "dense1.w" in r.stdout and "PASS: the rule is as close (within 10 %) or closer" in r.stdout


@pytest.mark.slow
def test_train_audit_every_and_gradcheck_run_dir(tmp_path):
    run = tmp_path / "run"
    r = jaxbp("train", "--model", "mlp", "--epochs", "1", "--audit-every", "10", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    records = [json.loads(l) for l in (run / "gradients.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records] == [10, 20, 30, 40]   # 44 steps an epoch: chunks end at each audit
    names = [p["parameter"] for p in records[0]["parameters"]]
    assert names[:3] == ["dense1.w", "bn1.beta", "bn1.gamma"] and "dense3.w" in names
    for x in records:
        for p in x["parameters"]:   # float32 against float64: a few rounding units, and the rule no worse
            assert 0 < p["rule"] < 1e-5 and p["rule"] <= 10 * p["twin"], p
    assert (run / "gradients.png").stat().st_size > 0
    r = jaxbp("gradcheck", "--run-dir", str(run))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ckpt-" in r.stdout and "dense1.w" in r.stdout and "PASS: the rule is as close" in r.stdout


def test_help_gives_each_option_one_default_and_no_none():
    """'(default: download…) (default: None)' on one option; the CPU and
    accelerator values repeated when equal."""
    import re
    from jaxbp import cli
    parser = cli.build_parser()
    (train,) = [a.choices["train"] for a in parser._actions if getattr(a, "choices", None) and "train" in a.choices]
    text = " ".join(train.format_help().split())
    options = re.split(r" (?=--[a-z])", text[text.index("options:"):])
    for option in options:
        assert option.count("(default:") + option.count("; default:") <= 1, option
        assert "(default: None)" not in option, option
    assert "on CPUs: 0.1; mnist with cnn on accelerators: 0.1" not in text and "(mnist with cnn: 0.1)" in text
