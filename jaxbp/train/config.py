"""The training configuration: one source for every option's name, type,
choices, default and help text. ``jaxbp train``'s options are generated from
it, and :meth:`Config.validate` checks a config built in Python by the same
rules."""
from __future__ import annotations

import dataclasses
import math

from jaxbp import data as data_lib, layers, precision
from jaxbp.ops import CHOICES, DEFAULT_ALGORITHM

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


def _rule(cast, accept, expected):
    """An option of type ``cast`` whose value is valid when ``accept(value)``;
    ``expected`` says what is valid, for the error message (CLI and validate)."""
    kinds = (int,) if cast is int else (int, float)
    return {"type": cast, "rule": (lambda v: isinstance(v, kinds) and not isinstance(v, bool) and accept(v),
                                   expected)}


POSITIVE_INT = _rule(int, lambda v: v > 0, "a positive integer")
NONNEGATIVE_INT = _rule(int, lambda v: v >= 0, "an integer >= 0")
POSITIVE_FLOAT = _rule(float, lambda v: 0 < v < math.inf, "a positive finite number")
NONNEGATIVE_FLOAT = _rule(float, lambda v: 0 <= v < math.inf, "a number >= 0")
RATE = _rule(float, lambda v: 0 <= v < 1, "in [0, 1)")
ACCURACY = _rule(float, lambda v: 0 < v <= 1, "in (0, 1]")


def option(default, help, **meta):
    """A config field and its command-line option (``meta``: ``choices`` — a
    tuple, or a function returning one, for a registry that can grow — or a
    ``type`` and ``rule``)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def choices(field):
    """The values ``field`` (a Config field) accepts, or ``None``: read when
    asked, so that a data set or model registered later is accepted."""
    c = field.metadata.get("choices")
    return c() if callable(c) else c


# What a data set changes in the defaults of one model (``jaxbp train --data
# mnist``, or ``Config(data="mnist")``), on CPUs and on accelerators (GPUs and
# TPUs share one entry; it was measured on GPUs); options given explicitly
# still win. MNIST with the cnn, chosen for time to 99 % test accuracy
# (BENCHMARKS.md, "MNIST"): on a CPU a narrower CNN, each conv's
# algorithm chosen from its shapes ("auto"), no dropout, a short warm-up; on an
# accelerator the default width and few large batches, since there a step's
# cost is mostly its kernel launches, not its arithmetic.
RECIPES = {
    # The bundled digits (1,438 training images): at width 32 the test accuracy
    # spread over seeds reached below 98 % on some CPUs (BENCHMARKS.md).
    ("digits", "cnn"): {"cpu": dict(width=48), "accelerator": dict(width=48)},
    ("mnist", "cnn"): {
        "cpu": dict(width=12, block="conv-pool-bn-relu", algorithm="auto", epochs=2, dropout=0.0,
                    warmup_epochs=0.1, eval_batch_size=50),
        "accelerator": dict(block="conv-pool-bn-relu", batch_size=512, lr=1e-2, epochs=3, dropout=0.0,
                            warmup_epochs=0.1, eval_batch_size=2000),
    },
}


def recipe(data, model="cnn", backend=None):
    """The defaults ``data`` changes for ``model`` (:data:`RECIPES`) on
    ``backend`` ("cpu", "gpu", "tpu"; default: JAX's default backend, where
    the run will compute)."""
    entry = RECIPES.get((data, model))
    if entry is None:
        return {}
    if backend is None:
        import jax
        backend = jax.default_backend()
    return entry["cpu" if backend == "cpu" else "accelerator"]


def _model_option(help, **meta):
    """An option of the model (:data:`jaxbp.layers.MODEL_OPTIONS`): ``None``
    takes the model's default; a model that does not read it refuses a value."""
    return option(None, help + " (default: the model's; refused by a model that does not read it)", **meta)


@dataclasses.dataclass
class Config:
    model: str = option("cnn", "the network (the registry: jaxbp.layers.MODELS)", choices=lambda: tuple(layers.MODELS))
    data: str = option("digits", "the data set (digits are bundled; mnist, fashion-mnist and cifar10 are "
                                 "downloaded once, or read from --data-dir)", choices=data_lib.names)
    data_dir: str | None = option(None, "directory with the data set's files (default: download them into "
                                        "$JAXBP_DATA or the user cache directory)")
    epochs: int = option(60, "epochs of the whole run (with --resume: extends the run to this many, and the "
                             "learning rate's cosine then spans the longer run)",
                         **POSITIVE_INT)
    batch_size: int = option(32, "examples per step", **POSITIVE_INT)
    lr: float = option(3e-3, "peak learning rate (warm-up, then cosine decay)", **POSITIVE_FLOAT)
    optimizer: str = option("adamw", "optax optimizer", choices=OPTIMIZERS)
    weight_decay: float = option(1e-4, "decoupled for adamw; otherwise the L2 term R = (λ/2)Σ‖W‖² in the loss",
                                 **NONNEGATIVE_FLOAT)
    warmup_epochs: float = option(1.0, "linear warm-up of the learning rate, in epochs", **NONNEGATIVE_FLOAT)
    seed: int = option(0, "initialization, dropout and data order", type=int)
    gradients: str = option("custom", "hand-derived rules or their autodiff twins", choices=tuple(layers.GRADIENTS))
    dtype: str = option("float32", "precision policy: compute dtype (parameters stay float32, or float64)",
                        choices=precision.NAMES)
    algorithm: str | None = _model_option(f"conv2d algorithm (auto: per layer, from its shapes and the backend; "
                                          f"{DEFAULT_ALGORITHM} in cnn and the resnets)", choices=CHOICES)
    layout: str | None = _model_option("layout inside a convolutional network (input is NCHW either way; NHWC in "
                                       "cnn and the resnets)", choices=("NCHW", "NHWC"))
    run_dir: str | None = option(None, "where config.json, metrics.jsonl, curves.png and checkpoints/ go; it "
                                       "must be new or empty (default: a new runs/<time>-<model>-<data>, with "
                                       "runs/latest pointing at it; with --resume: runs/latest)")
    resume: bool = option(False, "continue the run in --run-dir from its newest checkpoint, with its config.json")
    checkpoint_every: int = option(0, "also write a checkpoint every this many steps inside an epoch (after the "
                                      "compiled chunk of steps that reaches the count); --resume continues "
                                      "from it mid-epoch, exactly (0: after each epoch only)", **NONNEGATIVE_INT)
    overwrite: bool = option(False, "start a new run in a --run-dir that holds one, deleting the old run first")
    eval_batch_size: int = option(512, "examples per evaluation batch", **POSITIVE_INT)
    augment: int | None = option(None, "random shifts (crops of the zero-padded image) of up to this many pixels "
                                       "(0: off; default: the data set's, 4 for cifar10, else 1)", **NONNEGATIVE_INT)
    flip: str = option("auto", "random horizontal flips (auto: where the data set's entry says, cifar10)", choices=("auto", "on", "off"))
    devices: int | None = option(None, "data-parallel over this many devices (default: all, of all processes)",
                                 **POSITIVE_INT)
    width: int | None = _model_option("the model's width: the cnn's first conv channels (32; the second has 2×, "
                                      "the dense layer 4×), the mlp's hidden units (256)", **POSITIVE_INT)
    block: str | None = _model_option(f"order of each cnn block ({layers.CNN_BLOCKS[0]}; conv-pool-bn-relu: "
                                      "pooling first, so batch norm and relu see a quarter of the values)",
                                      choices=layers.CNN_BLOCKS)
    # 0.5: on the small digits set, a lighter dropout left some seeds well short (BENCHMARKS.md).
    dropout: float | None = _model_option("dropout rate before the last dense layer (cnn, mlp: 0.5)", **RATE)
    audit_every: int = option(0, "every this many steps (at the end of the compiled chunk that reaches the "
                                 "count), the float32 gradient of every parameter on that step's batch, by the "
                                 "rules and by the twins, against float64: gradients.jsonl and gradients.png "
                                 "(0: off)", **NONNEGATIVE_INT)
    stop_at_accuracy: float | None = option(None, "end the run at the first evaluation with test accuracy >= this "
                                                  "(e.g. 0.99), and say how long it took", **ACCURACY)

    @classmethod
    def for_data(cls, data="digits", backend=None, **given):
        """The config for ``data`` on ``backend`` (default: where JAX computes):
        the defaults, then the data set's recipe for the model (:func:`recipe`),
        then ``given``. ``Config(data=..., ...)`` is the same on JAX's backend."""
        cfg = cls.__new__(cls)
        _FIELDS_INIT(cfg, data=data, **given)
        for name, value in recipe(data, cfg.model, backend).items():
            if name not in given:
                setattr(cfg, name, value)
        return cfg

    def validate(self):
        """Raise ValueError naming the first bad field."""
        import jax
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None and f.default is None:
                continue
            allowed = choices(f)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{f.name} must be one of {', '.join(allowed)}, got {value!r}")
            if "rule" in meta and not meta["rule"][0](value):
                raise ValueError(f"{f.name} must be {meta['rule'][1]}, got {value!r}")
        self.model_options()   # an option the model would ignore: refused
        if self.resume and self.overwrite:
            raise ValueError("overwrite=True (--overwrite) starts a new run; it cannot be combined with "
                             "resume=True (--resume)")
        if self.devices is not None and self.devices > jax.device_count():
            raise ValueError(f"devices (--devices) must be at most the {jax.device_count()} available "
                             f"device(s), got {self.devices!r}")
        if self.batch_size % self.num_devices():
            raise ValueError(f"batch_size must be a multiple of the {self.num_devices()} devices, "
                             f"got {self.batch_size!r}")
        self.policy()  # float64 without x64: a clear error
        return self

    def model_options(self):
        """The model's options (:func:`jaxbp.layers.model_options`): its
        defaults, then this config's; ``ValueError`` for one it does not read."""
        return layers.model_options(self.model, **{k: getattr(self, k) for k in layers.MODEL_OPTIONS})

    def num_devices(self):
        import jax
        return jax.device_count() if self.devices is None else self.devices

    def policy(self):
        return precision.Policy.named(self.dtype)

    def augmentation(self):
        """``(max_shift, flip)``: the data set's standard (its registry entry's
        ``shift`` and ``flip``; CIFAR-10: random 32×32 crops of the image padded
        by 4, and horizontal flips) unless given."""
        entry = data_lib.get(self.data)
        shift = entry.shift if self.augment is None else self.augment
        return shift, self.flip == "on" or (self.flip == "auto" and entry.flip)

    def weight_decay_terms(self):
        """``(decoupled, l2)``: AdamW decays weights itself; the other optimizers
        get the derivation's term R = (λ/2)Σ‖W‖² in the loss. Decided here only."""
        return (self.weight_decay, 0.0) if self.optimizer == "adamw" else (0.0, self.weight_decay)


_FIELDS_INIT = Config.__init__


def _init(self, *args, **given):
    """``Config(...)``: the fields given, then, for those not given, the data
    set's recipe (as ``jaxbp train --data mnist`` applies it), then the defaults."""
    names = [f.name for f in dataclasses.fields(Config)]
    given.update(zip(names, args))
    data = given.get("data", Config.__dataclass_fields__["data"].default)
    cfg = Config.for_data(data, **{k: v for k, v in given.items() if k != "data"})
    self.__dict__.update(cfg.__dict__)


Config.__init__ = _init
