"""A gallery of wrong backward rules, and what ``jaxbp.check`` says of each.

Each entry is a rule a careful student could write: a slip of the source
derivation that docs/derivation.md corrects, or a misreading the text invites.
Every wrong rule sits beside its forward, written with the public API only
(``jaxbp.Rule``, ``jaxbp.op``); ``GALLERY`` maps a name to the op, its example
inputs, the words the diagnosis must contain, and the right op to compare.

    python examples/wrong_rules.py          # every entry's report, one after another
"""
import jax
import jax.numpy as jnp
import numpy as np

import jaxbp


def normal(seed, *shapes):
    """float64 inputs, kept so by NumPy whatever JAX's x64 setting (jaxbp.check works in float64)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(s) for s in shapes)


# -- dense: Z = X Wᵀ + b (docs/derivation.md §1) --------------------------------
def _dense_forward(x, w, b):
    return x @ w.T + b[None, :], (x, w)


def dense_rule(mistake=None):
    """``mistake``: "db literal" (the source's bias inside Σₜ read literally: δb = 0),
    "db fan-in" (the same sum counted: δb = fan-in · Σ δz), "dw transposed" (δW = XᵀδZ)."""
    def backward(res, g):
        x, w = res
        dw = x.T @ g if mistake == "dw transposed" else g.T @ x
        db = {"db literal": jnp.zeros(g.shape[1]), "db fan-in": x.shape[1] * g.sum(0)}.get(mistake, g.sum(0))
        return g @ w, dw, db
    rule = jaxbp.Rule(_dense_forward, backward, name=f"dense ({mistake or 'right'})")
    return jaxbp.op(lambda x, w, b: rule(x, w, b))


# -- activations: δz = δa ⊙ f'(z) ------------------------------------------------
def _sigmoid_forward(z):
    a = jax.nn.sigmoid(z)
    return a, a


def _tanh_forward(z):
    a = jnp.tanh(z)
    return a, a


def _relu_forward(z):
    return jnp.where(z > 0, z, 0.0), z


sigmoid_twice = jaxbp.op(jaxbp.Rule(_sigmoid_forward, lambda a, g: (2.0 * g * a * (1 - a),), name="sigmoid ×2"))
tanh_sign = jaxbp.op(jaxbp.Rule(_tanh_forward, lambda a, g: (-g * (1 - a * a),), name="tanh, sign flipped"))
# The source's δzᵢ with an extra Σᵢ over the free index: every entry gets the row's sum.
sigmoid_summed = jaxbp.op(jaxbp.Rule(
    _sigmoid_forward, lambda a, g: (jnp.broadcast_to((g * a * (1 - a)).sum(-1, keepdims=True), a.shape),),
    name="sigmoid, δz summed over i"))
# relu'(0) taken as 1 (z ≥ 0): right everywhere but at 0, where JAX's convention is 0.
relu_at_zero = jaxbp.op(jaxbp.Rule(_relu_forward, lambda z, g: (jnp.where(z >= 0, g, 0.0),), name="relu, z ≥ 0"))
# tanh' written for the input, applied to the saved output: 1 − tanh²(a) where 1 − a² belongs.
tanh_at_output = jaxbp.op(jaxbp.Rule(_tanh_forward, lambda a, g: (g * (1 - jnp.tanh(a) ** 2),),
                                     name="tanh, f'(a)"))


# softmax's δz = a ⊙ (δa − Σⱼ δaⱼ aⱼ) without the sum: its Jacobian's diagonal alone.
softmax_diagonal = jaxbp.op(jaxbp.Rule(lambda z: (jax.nn.softmax(z, axis=-1),) * 2, lambda a, g: (a * g,),
                                       name="softmax, diagonal only"))


# -- centring that also returns the mean: δx = δy − mean(δy) + δμ/N -----------------
def center_rule(ignore_mean=False):
    def forward(x):   # (N, D) -> (x − μ, μ), μ over N
        mu = x.mean(0)
        return (x - mu[None], mu), ()

    def backward(_, g):
        gy, gmu = g
        dx = gy - gy.mean(0, keepdims=True)
        return (dx if ignore_mean else dx + gmu[None] / gy.shape[0],)
    return jaxbp.op(jaxbp.Rule(forward, backward, name=f"center ({'δμ ignored' if ignore_mean else 'right'})"))


# -- the maximum of each row: δ goes to the arg-max (the first, on ties) -------------
def rowmax_rule(to_all=False):
    def forward(z):
        return z.max(-1), z

    def backward(z, g):
        if to_all:   # every element of the row: a sum's gradient, not a max's
            return (jnp.broadcast_to(g[:, None], z.shape),)
        return (g[:, None] * jax.nn.one_hot(jnp.argmax(z, -1), z.shape[-1], dtype=z.dtype),)
    return jaxbp.op(jaxbp.Rule(forward, backward, name=f"row max ({'to all' if to_all else 'to the arg-max'})"))


# σ' = a(1 − a) written with the input z in place of the output a: z(1 − z).
sigmoid_of_input = jaxbp.op(jaxbp.Rule(lambda z: (jax.nn.sigmoid(z), z), lambda z, g: (g * z * (1 - z),),
                                       name="sigmoid, z(1 − z)"))


# -- softplus with a learned sharpness β: log(1 + e^{βz})/β ------------------------
def _softplus_forward(z, beta):
    return jnp.logaddexp(0.0, beta * z) / beta, (z, beta)


def softplus_rule(mistake=None):
    """δz = δa σ(βz), δβ = Σ δa (z σ(βz)/β − a/β). ``mistake``: "sign inside"
    (σ(−βz)), "dβ quotient" (the quotient rule's −a/β term dropped)."""
    def backward(res, g):
        z, beta = res
        s = jax.nn.sigmoid(beta * z)
        a = jnp.logaddexp(0.0, beta * z) / beta
        dz = g * (jax.nn.sigmoid(-beta * z) if mistake == "sign inside" else s)
        dbeta = (g * z * s / beta).sum() - (0.0 if mistake == "dβ quotient" else (g * a / beta).sum())
        return dz, dbeta
    return jaxbp.op(jaxbp.Rule(_softplus_forward, backward, name=f"softplus ({mistake or 'right'})"))


# -- softmax cross-entropy with soft targets (§6) ---------------------------------
def _xent_forward(o, y):
    log_p = jax.nn.log_softmax(o)
    return -(y * log_p).sum(-1), (log_p, y)


def _xent_backward_normalized(res, g):
    log_p, y = res   # the source's final softmax(o) − y: right only when Σy = 1
    return g[:, None] * (jnp.exp(log_p) - y), -g[:, None] * log_p


xent_sum_one = jaxbp.op(jaxbp.Rule(_xent_forward, _xent_backward_normalized, name="xent, softmax − y"))


def _xent_backward_right(res, g):
    log_p, y = res
    return g[:, None] * (jnp.exp(log_p) * y.sum(-1, keepdims=True) - y), -g[:, None] * log_p


xent_right = jaxbp.op(jaxbp.Rule(_xent_forward, _xent_backward_right, name="xent, softmax·Σy − y"))


# -- mean squared error (§7): (o − y)/L is the norm's gradient, not the mean's -----
def _mse_forward(o, y):
    r = o - y
    return (r * r).mean(-1), r


def _mse_backward_norm(r, g):
    d = g[:, None] * r / jnp.sqrt((r * r).sum(-1, keepdims=True))   # (o − y)/L: the norm's, per example
    return d, -d


mse_norm_rule = jaxbp.op(jaxbp.Rule(_mse_forward, _mse_backward_norm, name="mse with (o − y)/L"))


# -- convolution through im2col (§3), NCHW, stride 1, no padding ------------------
def _im2col(x, fh, fw):
    """(N, I, H, W) -> (N·H'·W', I·FH·FW), rows (n, h', w'), columns (i, fh, fw)."""
    n, i, h, w = x.shape
    ho, wo = h - fh + 1, w - fw + 1
    cols = jnp.stack([x[:, :, a:a + ho, b:b + wo] for a in range(fh) for b in range(fw)], axis=2)
    return cols.reshape(n, i, fh, fw, ho, wo).transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, i * fh * fw)


def _col2im(dcols, shape, fh, fw, assign=False):
    """The adjoint of im2col: every patch entry *added* back into place (``assign``: overwritten)."""
    n, i, h, w = shape
    ho, wo = h - fh + 1, w - fw + 1
    d = dcols.reshape(n, ho, wo, i, fh, fw).transpose(0, 3, 4, 5, 1, 2)
    dx = jnp.zeros(shape, dcols.dtype)
    for a in range(fh):
        for b in range(fw):
            at = dx.at[:, :, a:a + ho, b:b + wo]
            dx = at.set(d[:, :, a, b]) if assign else at.add(d[:, :, a, b])
    return dx


def _conv_forward(x, f):
    o, i, fh, fw = f.shape
    n, _, h, w = x.shape
    ho, wo = h - fh + 1, w - fw + 1
    cols, f_mat = _im2col(x, fh, fw), f.reshape(o, i * fh * fw).T      # X̃, F̃ = reshape(F)ᵀ
    y = (cols @ f_mat).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
    return y, (x, f)


def conv_rule(mistake=None):
    """``mistake``: "dF from dX" (the source's δF̃ = δX̃ᵀδỸ), "no transpose" (δF̃
    reshaped to O×I×FH×FW without its transpose), "col2im assigns", "flipped kernel"."""
    def backward(res, g):
        x, f = res
        o, i, fh, fw = f.shape
        dy = g.transpose(0, 2, 3, 1).reshape(-1, o)                     # δỸ, (N·H'·W') × O
        cols, f_mat = _im2col(x, fh, fw), f.reshape(o, -1).T
        dcols = dy @ f_mat.T                                             # δX̃ = δỸ F̃ᵀ
        df_mat = (dcols.T if mistake == "dF from dX" else cols.T) @ dy   # δF̃ = X̃ᵀ δỸ
        df = (df_mat.reshape(f.shape) if mistake == "no transpose" else df_mat.T.reshape(f.shape))
        if mistake == "flipped kernel":
            df = jnp.flip(df, (2, 3))
        return _col2im(dcols, x.shape, fh, fw, assign=mistake == "col2im assigns"), df
    return jaxbp.op(jaxbp.Rule(_conv_forward, backward, name=f"conv ({mistake or 'right'})"))


# -- a gather with repeated indices: the table's gradient must add repeats ----------
def embed_rule(assign=False):
    def forward(table, ids):
        return table[ids], (ids, jnp.zeros_like(table))

    def backward(res, g):
        ids, zeros = res
        return (zeros.at[ids].set(g) if assign else zeros.at[ids].add(g)), None
    return jaxbp.op(jaxbp.Rule(forward, backward, name=f"embed ({'set' if assign else 'add'})"))


# -- batch norm (§5) without the paths through μ and σ² ---------------------------
def _bn_forward(x, gamma, beta):   # (N, D), statistics over N, kept as (1, D)
    mu = x.mean(0, keepdims=True)
    inv_std = jax.lax.rsqrt(((x - mu) ** 2).mean(0, keepdims=True) + 1e-5)
    x_hat = (x - mu) * inv_std
    return gamma[None] * x_hat + beta[None], (x_hat, inv_std, gamma)


def _bn_backward_no_stats(res, g):
    x_hat, inv_std, gamma = res
    return g * gamma[None] * inv_std, (g * x_hat).sum(0), g.sum(0)   # δx as if μ, σ² were constants


bn_no_stats = jaxbp.op(jaxbp.Rule(_bn_forward, _bn_backward_no_stats, name="batch norm without δμ, δσ²"))


# -- standardization with a one-pass variance: right in float64, not in float32 -----
def _standardize_forward(x):
    mu = x.mean(-1, keepdims=True)
    c = x - mu
    return c * jax.lax.rsqrt((c * c).mean(-1, keepdims=True)), (x,)


def standardize_rule(one_pass):
    def backward(res, g):
        (x,) = res
        mu = x.mean(-1, keepdims=True)
        var = (x * x).mean(-1, keepdims=True) - mu * mu if one_pass else ((x - mu) ** 2).mean(-1, keepdims=True)
        inv = jax.lax.rsqrt(var)
        y = (x - mu) * inv
        return (inv * (g - g.mean(-1, keepdims=True) - y * (g * y).mean(-1, keepdims=True)),)
    return jaxbp.op(jaxbp.Rule(_standardize_forward, backward,
                               name=f"standardize ({'E[x²] − μ²' if one_pass else 'two-pass'})"))


x8, w8, b8, sq = normal(0, (6, 4), (3, 4), (3,), (4, 4))
conv_x, conv_f = normal(1, (2, 2, 5, 5), (3, 2, 3, 3))
logits, raw = normal(2, (5, 4), (5, 4))
bn_x, bn_g, bn_b = normal(3, (8, 3), (3,), (3,))
beta = np.float64(1.5)   # softplus's sharpness, differentiated too

# name -> (wrong op, args, words the diagnosis must contain, right op)
GALLERY = {
    # The source derivation's own slips (docs/derivation.md states each correction).
    "source: δF̃ = δX̃ᵀδỸ": (conv_rule("dF from dX"), (conv_x, conv_f), "only 'f' is wrong", conv_rule()),
    "source: δb with the bias inside Σₜ (δb = 0)": (dense_rule("db literal"), (x8, w8, b8), "0 everywhere",
                                                    dense_rule()),
    "source: δb counted fan-in times": (dense_rule("db fan-in"), (x8, w8, b8), "factor of 4", dense_rule()),
    "source: δzᵢ with an extra Σᵢ": (sigmoid_summed, (x8,), "an extra Σᵢ", jaxbp.sigmoid),
    "source: softmax(o) − y with Σy ≠ 1": (xent_sum_one, (logits, 3 * np.abs(raw)), "only 'o' is wrong",
                                           xent_right),
    "source: (o − y)/L for a mean squared error": (mse_norm_rule, normal(4, (5, 6), (5, 6)),
                                                   "different factor for each index along axis 0", jaxbp.mse),
    # Misreadings the text invites.
    "col2im that overwrites": (conv_rule("col2im assigns"), (conv_x, conv_f), "feeds more outputs", conv_rule()),
    "flipped kernel": (conv_rule("flipped kernel"), (conv_x, conv_f), "flipped along axes (2, 3)", conv_rule()),
    "δF̃ reshaped without its transpose": (conv_rule("no transpose"), (conv_x, conv_f),
                                          "reshape that misses its transpose", conv_rule()),
    "batch norm without the μ/σ² paths": (bn_no_stats, (bn_x, bn_g, bn_b), "(δμ, δσ²) are missing",
                                          jaxbp.op(jaxbp.Rule(_bn_forward, lambda r, g: _bn_right(r, g)))),
}


def _bn_right(res, g):
    x_hat, inv_std, gamma = res
    m = x_hat.shape[0]
    dbeta, dgamma = g.sum(0, keepdims=True), (g * x_hat).sum(0, keepdims=True)
    return gamma[None] * inv_std / m * (m * g - dbeta - x_hat * dgamma), dgamma[0], dbeta[0]


if __name__ == "__main__":
    for name, (wrong, args, words, right) in GALLERY.items():
        report = jaxbp.check(wrong, *args, transforms=(), second_order=False)
        print(f"\n== {name}\n{report}")
