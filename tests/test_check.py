"""jaxbp.check: each kind of wrong rule is caught and named; the right rule passes."""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from helpers import normal

_spec = importlib.util.spec_from_file_location(
    "wrong_rules", pathlib.Path(__file__).resolve().parents[1] / "examples" / "wrong_rules.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

# A diagnosis needs the first-order comparison; the rows it does not need are skipped
# (each entry turns on what its mistake shows in: zeros, float32).
FAST = dict(transforms=(), second_order=False, special_points=False, dtype=None)


def diagnosed(report, words):
    return any(words in d for d in report.diagnoses)


sq_w = normal(5, (4, 4))[0]
table, ids = normal(6, (5, 3))[0], jnp.array([0, 2, 2, 4, 2, 0])
std_x = 10 + 0.1 * normal(7, (4, 16))[0]   # a mean 100× the spread: E[x²] − μ² cancels in float32

# diagnosis -> (wrong op, args, check options, words, right op)
DIAGNOSES = {
    "constant factor": (W.sigmoid_twice, (W.x8,), {}, "×2 everywhere", jaxbp.sigmoid),
    "sign flipped": (W.tanh_sign, (W.x8,), {}, "sign flipped", jaxbp.tanh),
    "transposed": (W.dense_rule("dw transposed"), (W.x8[:, :4], sq_w, W.b8[:1].repeat(4)), {},
                   "axes permuted (1, 0)", W.dense_rule()),
    "overlapping windows": (W.conv_rule("col2im assigns"), (W.conv_x, W.conv_f), {},
                            "feeds more outputs than the fewest", W.conv_rule()),
    "repeated indices": (W.embed_rule(assign=True), (table, ids), {}, "feeds more outputs than the fewest",
                         W.embed_rule()),
    "at zero": (W.relu_at_zero, (W.x8,), {"special_points": True}, "where 'z' exactly 0", jaxbp.relu),
    "one argument": (W.dense_rule("db fan-in"), (W.x8, W.w8, W.b8), {}, "only 'b' is wrong", W.dense_rule()),
    "at the wrong point: −z": (W.softplus_rule("sign inside"), (W.x8, W.beta), {}, "at −z: a sign inside",
                               W.softplus_rule()),
    "at the wrong point: the output": (W.tanh_at_output, (W.x8,), {}, "at the output f(z)", jaxbp.tanh),
    "the output's formula at the input": (W.sigmoid_of_input, (W.x8,), {}, "in terms of the output, φ(a), "
                                          "evaluated at the input z", jaxbp.sigmoid),
    "softmax's sum missing": (W.softmax_diagonal, (W.x8,), {}, "a multiple of the output", jaxbp.softmax),
    "δ to every element of a max": (W.rowmax_rule(to_all=True), (W.x8,), {}, "instead of the one the forward "
                                    "selected", W.rowmax_rule()),
    "one output's cotangent ignored": (W.center_rule(ignore_mean=True), (W.x8,), {},
                                       "wrong only through output[1] (f64[4])", W.center_rule()),
    "one value": (W.softplus_rule("dβ quotient"), (W.x8, W.beta), {}, "one value, the rule's", W.softplus_rule()),
    "float32 only": (W.standardize_rule(one_pass=True), (std_x,), {"dtype": "float32"}, "wrong only in float32",
                     W.standardize_rule(one_pass=False)),
}


@pytest.mark.parametrize("kind", list(DIAGNOSES))
def test_a_wrong_rule_is_caught_and_its_mistake_named(kind):
    wrong, args, options, words, right = DIAGNOSES[kind]
    report = jaxbp.check(wrong, *args, **{**FAST, **options})
    assert not report.ok, report
    assert diagnosed(report, words), report
    good = jaxbp.check(right, *args, **{**FAST, **options})
    assert good.ok, good


def test_float32_only_rule_passes_float64():
    wrong, args, options, _, _ = DIAGNOSES["float32 only"]
    report = jaxbp.check(wrong, *args, **{**FAST, **options})
    assert all(a.ok for a in report.arguments), report     # float64 agrees with the twin
    (row,) = [r for r in report.rows if r.check == "float32 vs float64 truth"]
    assert not row.ok and row.value > 100 * float(row.detail.split()[1].rstrip(";")), row


@pytest.mark.parametrize("name", list(W.GALLERY))
def test_the_gallery_of_the_source_derivations_mistakes(name):
    wrong, args, words, right = W.GALLERY[name]
    report = jaxbp.check(wrong, *args, **FAST)
    assert not report.ok and diagnosed(report, words), report
    assert jaxbp.check(right, *args, **FAST).ok


def test_worst_element_is_named_with_both_values():
    report = jaxbp.check(W.dense_rule("db fan-in"), W.x8, W.w8, W.b8, **FAST)
    b = {a.name: a for a in report.arguments}["b"]
    assert not b.ok and b.worst_index in {(0,), (1,), (2,)}
    assert b.custom_value == pytest.approx(4 * b.twin_value, rel=1e-12)
    fd = {r.argument: r for r in report.rows if r.check.startswith("finite differences")}
    assert not fd["b"].ok and fd["x"].ok and fd["w"].ok      # the differences name the argument too
    (jac,) = [r for r in report.rows if r.check.startswith("jacobian") and r.check.endswith("vs twin")]
    assert not jac.ok and "∂out[" in jac.detail and "/∂b[" in jac.detail, jac
    text = str(report)
    assert "FAILED" in text and f"{b.worst_index}: {b.custom_value:.6g} | {b.twin_value:.6g}" in text


def test_the_report_says_what_the_rule_and_its_twin_keep():
    report = jaxbp.check(W.tanh_sign, W.x8, **FAST)       # keeps its output a, as the twin does
    assert report.kept["rule"] == [((6, 4), "float64")], report.kept
    report = jaxbp.check(jaxbp.conv2d, W.conv_x, W.conv_f, **FAST)   # x and w; the twin also their transposes
    assert report.kept["rule"] == [((2, 2, 5, 5), "float64"), ((3, 2, 3, 3), "float64")], report.kept
    assert len(report.kept["twin"]) > 2
    assert "kept for the backward pass (float64 inputs, before XLA): rule 2 arrays, 1.2 KiB (f64[2,2,5,5], " \
        "f64[3,2,3,3]); twin" in str(report), report
    assert json.loads(json.dumps(report.to_dict()))["kept"]["rule"] == [[[2, 2, 5, 5], "float64"],
                                                                        [[3, 2, 3, 3], "float64"]]


def test_the_full_check_passes_a_right_rule_with_every_row():
    report = jaxbp.check(jaxbp.dense, W.x8, W.w8, W.b8)
    assert report.ok, report
    checks = {r.check for r in report.rows}
    for expected in ("twin", "finite differences (3 directions)", "second order vs twin", "under jit (vs eager)",
                     "under vmap", "under checkpoint", "float32 vs float64 truth", "bfloat16 dtype and shape",
                     "at 0 and ties (inputs rounded to halves)"):
        assert expected in checks, checks
    assert any(c.startswith("jacobian") for c in checks) and any(c.startswith("under shard_map") for c in checks)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] and [a["name"] for a in d["arguments"]] == ["x", "w", "b"]
    report.raise_if_failed()


def test_raise_if_failed_carries_the_report():
    report = jaxbp.check(W.tanh_sign, W.x8, **FAST)
    with pytest.raises(jaxbp.CheckFailed, match="sign flipped"):
        report.raise_if_failed()
    assert isinstance(jaxbp.CheckFailed("x"), AssertionError)   # pytest shows it as a failed assertion


def test_a_nan_gradient_from_finite_inputs_fails():
    rule = jaxbp.op(jaxbp.Rule(W._tanh_forward, lambda a, g: (g * jnp.log(a - 2),), name="tanh with a log"))
    report = jaxbp.check(rule, W.x8, **FAST)
    assert not report.ok and diagnosed(report, "non-finite gradient"), report
    assert jnp.isnan(report.arguments[0].rel_err)
    assert json.loads(json.dumps(report.to_dict()))["arguments"][0]["rel_err"] == "nan"


def test_second_order_through_the_rule():
    # δz = δa ⊙ (1 − a²) with a held out of the derivative: right first order, wrong second.
    rule = jaxbp.op(jaxbp.Rule(W._tanh_forward, lambda a, g: (g * (1 - jax.lax.stop_gradient(a) ** 2),),
                               name="tanh, residual frozen"))
    report = jaxbp.check(rule, W.x8, **{**FAST, "second_order": True})
    assert not report.ok and all(a.ok for a in report.arguments), report
    assert diagnosed(report, "grad of grad does not"), report


def test_a_rule_that_breaks_under_vmap_is_reported():
    def backward(res, g):   # a mask computed on the host: no batching rule
        (z,) = res
        mask = jax.pure_callback(lambda z: np.asarray(z > 0), jax.ShapeDtypeStruct(z.shape, jnp.bool_), z)
        return (jnp.where(mask, g, 0.0),)
    rule = jaxbp.op(jaxbp.Rule(lambda z: (jnp.where(z > 0, z, 0.0), (z,)), backward, name="host relu"))
    report = jaxbp.check(rule, W.x8, **{**FAST, "transforms": ("vmap", "checkpoint")})
    rows = {r.check: r for r in report.rows if r.check.startswith("under")}
    assert not rows["under vmap"].ok and "NotImplementedError" in rows["under vmap"].detail, report
    assert rows["under checkpoint"].ok and all(a.ok for a in report.arguments), report
    assert diagnosed(report, "under vmap: the rule raises NotImplementedError"), report
    with pytest.raises(ValueError, match=r"transforms: unknown \['pmap'\]"):
        jaxbp.check(rule, W.x8, transforms=("pmap",))


def test_a_jitted_function_or_no_rule_is_refused_not_passed():
    jitted = jax.jit(lambda x: jaxbp.relu(x).sum())
    jitted(W.x8)   # its first trace, with the custom rule, is cached
    report = jaxbp.check(jitted, W.x8, **FAST)
    assert not report.ok and diagnosed(report, "jax.jit-wrapped"), report
    report = jaxbp.check(lambda x: jnp.tanh(x), W.x8, **FAST)
    assert not report.ok and diagnosed(report, "no custom rule"), report


def test_a_composite_layer_checks_through_every_rule():
    def block(x, w, b, gamma, beta):
        y, _, _ = jaxbp.batch_norm(jaxbp.dense(x, w, b), gamma, beta)
        return jaxbp.relu(y)
    x, w, b, gamma, beta = normal(8, (8, 4), (3, 4), (3,), (3,), (3,))
    report = jaxbp.check(block, x, w, b, gamma, beta, **{**FAST, "transforms": ("vmap",), "second_order": True})
    assert report.ok, report
    assert [a.name for a in report.arguments] == ["x", "w", "b", "gamma", "beta"]


@pytest.mark.parametrize("label", ["dense"] + [pytest.param(label, marks=pytest.mark.slow) for label in (
    "conv2d NHWC implicit", "max_pool2d", "batch_norm", "layer_norm", "softmax_cross_entropy", "dropout")])
def test_builtin_ops_pass_every_check(label):
    from jaxbp.tools import gradcheck
    name, args, argnums, kwargs = gradcheck.op_problems(jnp.float64)[label]
    report = jaxbp.check(getattr(jaxbp, name), *args, argnums=argnums, **kwargs)
    assert report.ok, report


# -- Rule: a backward that returns the wrong thing is named ------------------------
def _dense_op(backward):
    return jaxbp.op(jaxbp.Rule(W._dense_forward, backward, name="my_dense"))


@pytest.mark.parametrize("backward, error, message", [
    (lambda res, g: (g @ res[1], g.T @ res[0]), ValueError,
     r"rule 'my_dense': backward returned 2 gradients for 3 array arguments \(x, w, b\)"),
    (lambda res, g: (g @ res[1], res[0].T @ g, g.sum(0)), ValueError,
     r"rule 'my_dense': backward's gradient for argument 'w' has shape \(4, 3\), expected \(3, 4\)"),
    (lambda res, g: (g @ res[1], g.T @ res[0], jnp.ones(3, jnp.int32)), TypeError,
     r"rule 'my_dense': backward's gradient for argument 'b' has dtype int32, expected a floating dtype"),
    (lambda res, g: g @ res[1], TypeError, r"rule 'my_dense': backward must return a tuple of 3 gradients"),
], ids=["count", "shape", "dtype", "not a tuple"])
def test_a_backward_returning_the_wrong_thing_is_named(backward, error, message):
    op = _dense_op(backward)
    with pytest.raises(error, match=message):
        jax.grad(lambda x, w, b: op(x, w, b).sum(), argnums=(0, 1, 2))(W.x8, W.w8, W.b8)


@pytest.mark.parametrize("traced, scale, message", [
    (True, jnp.ones(4), r"rule 'scaled': keyword argument 'scale' is an array \(float64\[4\]\); pass arrays "
                        r"positionally"),
    (False, jnp.ones(4), r"keyword argument 'scale' is an array"),
    (False, [1.0, 2.0, 3.0, 4.0], r"rule 'scaled': keyword argument 'scale' must be hashable .*, got list"),
], ids=["traced array", "array", "list"])
def test_a_keyword_option_that_is_an_array_or_unhashable_is_named(traced, scale, message):
    rule = jaxbp.Rule(lambda x, *, scale: (x * jnp.asarray(scale), ()), lambda r, g, scale: (g * jnp.asarray(scale),),
                      name="scaled")
    grad = jax.grad(lambda x, s: rule(x, scale=s).sum())
    with pytest.raises(TypeError, match=message):
        jax.jit(grad)(W.x8[:, :4], scale) if traced else grad(W.x8[:, :4], scale)


@pytest.mark.parametrize("twin", [False, True])
def test_a_forward_that_returns_no_pair_is_named(twin):
    rule = jaxbp.Rule(lambda z: jnp.sin(z), lambda r, g: (g,), name="sin")   # the residuals forgotten
    op = jaxbp.op(lambda z: rule(z))
    with pytest.raises(TypeError, match=r"rule 'sin': forward must return a pair \(output, residuals\), got "
                                        r"an array of shape \(2, 4\)"):
        jax.grad(lambda z: (op.autodiff if twin else op)(z).sum())(W.x8[:2])


def test_a_residual_that_is_not_an_array_is_named():
    rule = jaxbp.Rule(lambda z: (jnp.sin(z), (z, z.shape, "tag")), lambda r, g: (g * jnp.cos(r[0]),), name="sin")
    with pytest.raises(TypeError, match=r"rule 'sin': forward's residuals hold a str at \[2\]; residuals must be "
                                        r"arrays or numbers"):
        jax.grad(lambda z: rule(z).sum())(W.x8)


def test_the_public_extension_api():
    assert {"Rule", "op", "saved", "after", "validate", "check", "CheckReport", "CheckFailed"} <= set(jaxbp.__all__)
    with pytest.raises(ValueError, match=r"w must have shape \(3, 4\) \(out, in\), got \(4, 3\)"):
        jaxbp.validate.shape("w", jnp.ones((4, 3)), (3, 4), "out, in")

    @jaxbp.op(example=lambda normal: normal((4, 3)))
    def doubled(z):
        return W.sigmoid_twice(z)
    assert doubled.example(lambda *s: tuple(jnp.ones(x) for x in s))[0].shape == (4, 3)
    assert hasattr(doubled, "autodiff")


def test_a_rule_takes_a_python_number_positionally():
    op, x = W.softplus_rule(), W.x8

    def grads(argnums, constant=False):   # the rule's and the twin's
        if constant:
            return [jax.grad(lambda x, f=f: f(x, 1.5).sum())(x) for f in (op, op.autodiff)]
        return [jax.grad(lambda x, beta, f=f: f(x, beta).sum(), argnums=argnums)(x, 1.5) for f in (op, op.autodiff)]
    for rule, twin in (grads(0), grads(1), grads(0, constant=True)):
        np.testing.assert_allclose(rule, twin, rtol=1e-12)


# -- pytree arguments: a layer's parameters as one dict ----------------------------
def _layer_forward(params, x):
    return x @ params["w"].T + params["b"][None], (params, x)


def _layer_op(backward):
    return jaxbp.op(jaxbp.Rule(_layer_forward, backward, name="layer"))


def _layer_backward(res, g, db_factor=1.0):
    params, x = res
    return {"w": g.T @ x, "b": db_factor * g.sum(0)}, g @ params["w"]


def test_a_rule_takes_a_pytree_and_check_names_its_leaves():
    params, x = {"w": W.w8, "b": W.b8}, W.x8
    right = _layer_op(_layer_backward)
    grad = jax.grad(lambda p, x: right(p, x).sum(), argnums=(0, 1))
    for g, t in zip(jax.tree.leaves(grad(params, x)), jax.tree.leaves(jax.grad(
            lambda p, x: right.autodiff(p, x).sum(), argnums=(0, 1))(params, x))):
        np.testing.assert_allclose(g, t, rtol=1e-12)
    assert jaxbp.check(right, params, x, **FAST).ok
    report = jaxbp.check(_layer_op(lambda r, g: _layer_backward(r, g, 2.0)), params, x, **FAST)
    assert [a.name for a in report.arguments] == ["params['b']", "params['w']", "x"]
    assert not report.ok and diagnosed(report, "\"params['b']\": ×2 everywhere"), report
    only_x = jaxbp.check(_layer_op(lambda r, g: _layer_backward(r, g, 2.0)), params, x, argnums=1, **FAST)
    assert only_x.ok and [a.name for a in only_x.arguments] == ["x"]


@pytest.mark.parametrize("backward, message", [
    (lambda res, g: ({"w": g.T @ res[1]}, g @ res[0]["w"]),
     r"rule 'layer': backward's gradient for argument 'params' has structure PyTreeDef\(\{'w': \*\}\), "
     r"expected PyTreeDef\(\{'b': \*, 'w': \*\}\)"),
    (lambda res, g: ({"w": res[1].T @ g, "b": g.sum(0)}, g @ res[0]["w"]),
     r"rule 'layer': backward's gradient for argument 'params' at \['w'\] has shape \(4, 3\), expected \(3, 4\)"),
], ids=["structure", "leaf shape"])
def test_a_pytree_gradient_of_the_wrong_structure_or_shape_is_named(backward, message):
    op = _layer_op(backward)
    with pytest.raises(ValueError, match=message):
        jax.grad(lambda p: op(p, W.x8).sum())({"w": W.w8, "b": W.b8})
