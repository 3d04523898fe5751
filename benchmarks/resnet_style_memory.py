"""Compiled temporary memory of one SGD-momentum train step of the ResNet-style
network issue #14 measured on an H200 (32×32×3, stem conv 64, stages 64/128/256
of two basic blocks, 1×1 projections, global average pool, dense 10; implicit
conv, NHWC), custom rules vs twins, written with the public ops only so that it
runs on older commits too:

    python benchmarks/resnet_style_memory.py --batch-size 256
"""
import argparse

import jax
import jax.numpy as jnp
import optax

import jaxbp

_parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_parser.add_argument("--batch-size", type=int, default=256)
B = _parser.parse_args().batch_size

def init(key):
    ks = iter(jax.random.split(key, 64))
    conv = lambda o, i, k: jax.random.normal(next(ks), (o, i, k, k)) * (2 / (i * k * k)) ** .5
    p = {"stem": conv(64, 3, 3), "stem_bn": (jnp.ones(64), jnp.zeros(64)), "blocks": []}
    cin = 64
    for stage, w in enumerate((64, 128, 256)):
        for b in range(2):
            s = 2 if stage > 0 and b == 0 else 1
            blk = {"c1": conv(w, cin, 3), "b1": (jnp.ones(w), jnp.zeros(w)), "c2": conv(w, w, 3), "b2": (jnp.ones(w), jnp.zeros(w))}
            if s != 1 or w != cin:
                blk["sc"] = conv(w, cin, 1); blk["sb"] = (jnp.ones(w), jnp.zeros(w))
            p["blocks"].append(blk); cin = w
    p["head"] = (jax.random.normal(next(ks), (10, cin)) * 0.01, jnp.zeros(10))
    return p

def apply(ops, p, x):
    bn = lambda h, gb: ops.batch_norm(h, gb[0], gb[1], axis=3)[0]
    conv = lambda h, w, s: ops.conv2d(h, w, None, s, "SAME" if w.shape[2] > 1 else 0, algorithm="implicit", layout="NHWC")
    h = ops.relu(bn(conv(x.transpose(0, 2, 3, 1), p["stem"], 1), p["stem_bn"]))
    for blk in p["blocks"]:
        s = 2 if blk["c1"].shape[0] != blk["c1"].shape[1] else 1
        y = ops.relu(bn(conv(h, blk["c1"], s), blk["b1"]))
        y = bn(conv(y, blk["c2"], 1), blk["b2"])
        sc = bn(conv(h, blk["sc"], s), blk["sb"]) if "sc" in blk else h
        h = ops.relu(y + sc)
    h = ops.avg_pool2d(h, h.shape[1:3], layout="NHWC").reshape(h.shape[0], -1)
    return ops.dense(h, *p["head"])

opt = optax.sgd(0.1, momentum=0.9)
x = jnp.ones((B, 3, 32, 32)); y = jnp.zeros(B, jnp.int32)
for name, ops in (("custom", jaxbp), ("twin", jaxbp.autodiff)):
    def step(p, o, x, y):
        g = jax.grad(lambda p: ops.softmax_cross_entropy(apply(ops, p, x), y).mean())(p)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), o
    p = init(jax.random.key(0)); o = opt.init(p)
    m = jax.jit(step, donate_argnums=(0, 1)).lower(p, o, x, y).compile().memory_analysis()
    print(name, round(m.temp_size_in_bytes / 2**20, 1))
