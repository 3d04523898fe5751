"""The PyTorch reference for ResNet training steps: the network ``jaxbp train
--model resnet20|resnet18`` builds (``jaxbp.layers.resnet``: a 3×3 conv stem,
basic blocks ``conv 3×3, bn, relu, conv 3×3, bn`` plus a shortcut, 1×1 conv + bn
projections where the shape changes, global average pooling, one dense layer),
CIFAR-shaped input, cross-entropy, Adam (as ``jaxbp bench``) — written as a PyTorch
user would (eager mode, channels-last memory, oneDNN), to be timed beside
``jaxbp bench`` (``benchmarks/resnet_cpu.py`` alternates the two).

    python benchmarks/pytorch_resnet.py --model resnet20 --batch-size 32 --steps 30

Prints one JSON object: the median step time over the timed steps (after
``--warmup`` steps), and the whole process's wall time from its start.
"""
import argparse
import json
import os
import statistics
import time

START = time.time()

import torch  # noqa: E402
from torch import nn  # noqa: E402

WIDTHS = {"resnet20": ((16, 32, 64), 3), "resnet18": ((64, 128, 256, 512), 2)}


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                  nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        return torch.relu(self.main(x) + self.shortcut(x))


def resnet(name, num_classes=10):
    widths, blocks = WIDTHS[name]
    layers = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            layers.append(Block(c_in, width, 2 if stage > 0 and block == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def step_seconds(model, batch_size, steps, warmup=5):
    """Seconds of each of ``steps`` train steps (after ``warmup``): the network,
    Adam and cross-entropy on one random CIFAR-shaped batch, channels-last."""
    torch.manual_seed(0)
    net = resnet(model).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    net.train()
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=tuple(WIDTHS), default="resnet20")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    times = step_seconds(a.model, a.batch_size, a.steps, a.warmup)
    print(json.dumps({"framework": f"pytorch {torch.__version__}", "model": a.model, "batch_size": a.batch_size,
                      "threads": a.threads, "step_ms": 1e3 * statistics.median(times),
                      "steps": a.warmup + a.steps, "steps_s": sum(times), "process_s": time.time() - START}))


if __name__ == "__main__":
    main()
