"""The PyTorch reference for time to accuracy: the network, optimizer, schedule,
augmentation and kind of data order that ``jaxbp train --data mnist`` uses, written as a
PyTorch user would (eager mode, the data set as tensors in memory, no
DataLoader workers), so that the two can be timed side by side.

    python benchmarks/pytorch_mnist.py --data-dir DIR --epochs 2 --batch-size 32

Prints one line per epoch and, last, a JSON object with the whole-process wall
time (from the process's start, imports included) and the test accuracies.
``benchmarks/time_to_accuracy.py`` runs it next to jaxbp. Needs a CPU build of
PyTorch (``pip install -e .[torch]`` takes whatever build the index offers;
a CPU build is much smaller).

The same recipe as jaxbp's (``jaxbp/layers.py`` ``cnn``, ``jaxbp/train``):
``[conv 3×3 SAME (no bias), batch norm, relu, max pool 2×2]`` per width, flatten,
dense + relu, dropout, dense; He-normal weights (Glorot-uniform for the last
layer), zero biases; AdamW (decay on the weights only) with a linear warm-up
then cosine decay to 1 % of the peak; shifts of up to ``--augment`` pixels
(zero fill); evaluation with the running statistics. Each epoch is a fresh
random permutation, here NumPy's ``default_rng([seed, epoch])`` (jaxbp draws
its own on the device with ``jax.random``: the same kind of order, not the
same one, as the random initial weights are not the same either).
"""
import argparse
import importlib
import json
import math
import os
import sys
import time
import types

import numpy as np


def _process_start():
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


START = _process_start()

import torch  # noqa: E402  (after START: the import is part of the measured time)
from torch import nn  # noqa: E402


def load_mnist(directory):
    """jaxbp's own IDX reader (``jaxbp/data/idx.py`` imports only NumPy),
    imported without running the packages' ``__init__`` so that this process
    does not import JAX."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
    for name in ("jaxbp", "jaxbp.data"):   # bare packages: their modules, not their __init__
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = package
    ds = importlib.import_module("jaxbp.data.idx").load_idx_dir(directory)
    to_unit = importlib.import_module("jaxbp.data._base").to_unit
    # Floats in [0, 1] once, at load, as a PyTorch user would (torchvision's
    # ToTensor); jaxbp keeps the uint8 pixels and converts each batch on the device.
    return ds._replace(x_train=to_unit(ds.x_train), x_test=to_unit(ds.x_test))


def cnn(widths, dense, dropout, num_classes=10):
    layers, c = [], 1
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w, eps=1e-5, momentum=0.1),
                   nn.ReLU(), nn.MaxPool2d(2)]
        c = w
    side = 28 // 2 ** len(widths)
    layers += [nn.Flatten(), nn.Linear(c * side * side, dense), nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    layers += [nn.Linear(dense, num_classes)]
    model = nn.Sequential(*layers)
    last = layers[-1]
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if m is last:
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def shift(x, max_shift, generator):
    """Translate each image by up to ``max_shift`` pixels, zero fill (a random crop
    of the padded image), as jaxbp's ``random_shift``."""
    n, _, h, w = x.shape
    m = max_shift
    xp = nn.functional.pad(x, (m, m, m, m))
    off = torch.randint(0, 2 * m + 1, (n, 2), generator=generator)
    rows = (off[:, 0, None] + torch.arange(h))[:, None, :, None]
    cols = (off[:, 1, None] + torch.arange(w))[:, None, None, :]
    return xp[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def schedule(step, total, warmup, peak):
    """optax's warmup_cosine_decay_schedule(0, peak, warmup, total, peak / 100)."""
    if step < warmup:
        return peak * step / warmup
    t = min(step - warmup, total - warmup) / max(total - warmup, 1)
    end = peak * 1e-2
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    p.add_argument("--dense", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--augment", type=int, default=1)
    # 128: PyTorch's fastest evaluation of this CNN on the 2-core CPU (10,000 test
    # images: 1.33-1.69 s; 50: 1.73-1.95 s; 512: 2.43-2.77 s), as jaxbp's recipe
    # uses its own fastest (BENCHMARKS.md): each side at its best.
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    ds = load_mnist(args.data_dir)
    x_train, y_train = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train).long()
    x_test, y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test).long()
    model = cnn(args.widths, args.dense, args.dropout)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=args.lr)
    n = len(x_train)
    steps_per_epoch = n // args.batch_size
    total = args.epochs * steps_per_epoch
    warmup = min(int(args.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    loss_fn = nn.CrossEntropyLoss()
    step, history = 0, []
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        order = np.random.default_rng([args.seed, epoch]).permutation(n)[:steps_per_epoch * args.batch_size]
        batches = torch.from_numpy(order).reshape(-1, args.batch_size)
        losses = []
        for idx in batches:
            for group in opt.param_groups:
                group["lr"] = schedule(step, max(total, warmup + 1), warmup, args.lr)
            x = x_train[idx]
            if args.augment:
                x = shift(x, args.augment, generator)
            loss = loss_fn(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            step += 1
        train_loss = torch.stack(losses).mean().item()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for s in range(0, len(x_test), args.eval_batch_size):
                logits = model(x_test[s:s + args.eval_batch_size])
                correct += (logits.argmax(1) == y_test[s:s + args.eval_batch_size]).sum().item()
        acc = correct / len(x_test)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "test_accuracy": acc,
                        "seconds": time.perf_counter() - t0, "elapsed": time.time() - START})
        print(f"epoch {epoch + 1}  train_loss {train_loss:.4f}  test_acc {100 * acc:.2f}%  "
              f"{history[-1]['seconds']:.1f}s", flush=True)
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "training_seconds": time.perf_counter() - t_train, "process_seconds": time.time() - START,
                      "history": history}), flush=True)


if __name__ == "__main__":
    main()
