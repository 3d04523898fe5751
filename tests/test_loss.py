import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from helpers import Case, gradient_test, normal, sharded_test

logits, soft = normal(0, (5, 4), (5, 4))
CASES = {
    "xent_one_hot": Case(jaxbp.softmax_cross_entropy, (logits, jax.nn.one_hot(jnp.arange(5) % 4, 4)), (0,)),
    "xent_probabilities": Case(jaxbp.softmax_cross_entropy, (logits, jax.nn.softmax(soft)), (0, 1)),
    # Unnormalized weights: only the general form softmax(o)·Σy − y is right here.
    "xent_weights": Case(jaxbp.softmax_cross_entropy, (logits, jnp.abs(soft) * 3), (0, 1)),
    "xent_int_labels": Case(jaxbp.softmax_cross_entropy, (logits, jnp.array([0, 3, 1, 2, 3])), (0,)),
    "xent_int_labels_ignored": Case(jaxbp.softmax_cross_entropy, (logits, jnp.array([0, -100, 1, -100, 3])),
                                    (0,), {"ignore_index": -100}),
    "xent_int_labels_ignore_a_class": Case(jaxbp.softmax_cross_entropy, (logits, jnp.array([0, 2, 1, 2, 3])),
                                           (0,), {"ignore_index": 2}),
    "euclidean": Case(jaxbp.euclidean_loss, normal(1, (4, 3, 2), (4, 3, 2)), (0, 1)),
    "euclidean_1d": Case(jaxbp.euclidean_loss, normal(2, (6,), (6,)), (0, 1)),
    "mse": Case(jaxbp.mse, normal(3, (4, 5), (4, 5)), (0, 1)),
}
# euclidean_1d is |r| per example: its Hessian is exactly 0, so a relative
# second-order comparison would compare rounding noise.
test_gradients = gradient_test(CASES, composition=[n for n in CASES if n != "euclidean_1d"])
test_sharded = sharded_test({
    "xent": Case(jaxbp.softmax_cross_entropy, normal(4, (8, 3), (8, 3)), (0, 1)),
    "euclidean": Case(jaxbp.euclidean_loss, normal(5, (8, 3), (8, 3)), (0, 1)),
    "mse": Case(jaxbp.mse, normal(6, (8, 3), (8, 3)), (0, 1)),
})


def test_cross_entropy_equals_formula():
    o, y = np.asarray(logits), np.asarray(jnp.abs(soft))
    log_p = o - np.log(np.exp(o).sum(1, keepdims=True))
    np.testing.assert_allclose(jaxbp.softmax_cross_entropy(logits, jnp.abs(soft)), -(y * log_p).sum(1), rtol=1e-13)
    labels = jnp.array([0, 3, 1, 2, 3])
    np.testing.assert_allclose(jaxbp.softmax_cross_entropy(logits, labels),
                               -log_p[np.arange(5), np.asarray(labels)], rtol=1e-13)


def test_cross_entropy_gradient_is_general_form():
    y = jnp.abs(soft) * 3
    g = jax.grad(lambda o: jaxbp.softmax_cross_entropy(o, y).sum())(logits)
    np.testing.assert_allclose(g, jax.nn.softmax(logits) * y.sum(1, keepdims=True) - y, rtol=1e-13)


@pytest.mark.parametrize("targets", ["soft", "integer"])
def test_cross_entropy_finite_for_huge_float32_logits(targets):
    o = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], jnp.float32)
    y = jnp.array([1, 0]) if targets == "integer" else jnp.array([[0.2, 0.8, 0.0], [0.5, 0.0, 0.5]], jnp.float32)
    loss, grad = jax.value_and_grad(lambda o: jaxbp.softmax_cross_entropy(o, y).sum())(o)
    assert bool(jnp.isfinite(loss)) and bool(jnp.isfinite(grad).all())
    twin = jax.grad(lambda o: jaxbp.autodiff.softmax_cross_entropy(o, y).sum())(o)
    np.testing.assert_allclose(grad, twin, atol=1e-6)


def test_euclidean_gradient_is_exactly_zero_at_zero_residual():
    p = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    t = p.at[1].add(jnp.array([3.0, 4.0]))  # row 0: L = 0; row 1: L = 5
    for op in (jaxbp.euclidean_loss, jaxbp.autodiff.euclidean_loss):
        loss = op(p, t)
        gp, gt = jax.grad(lambda p, t: op(p, t).sum(), (0, 1))(p, t)
        assert loss.tolist() == [0.0, 5.0]
        assert gp[0].tolist() == [0.0, 0.0] and gt[0].tolist() == [0.0, 0.0]
        np.testing.assert_allclose(gp[1], [-0.6, -0.8], rtol=1e-15)


def test_mse_is_mean_of_squares():
    p, t = normal(8, (3, 4), (3, 4))
    np.testing.assert_allclose(jaxbp.mse(p, t), ((np.asarray(p) - np.asarray(t)) ** 2).mean(1), rtol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("op", [jaxbp.softmax_cross_entropy, jaxbp.euclidean_loss, jaxbp.mse])
def test_loss_in_float32_gradient_in_input_dtype(op, dtype):
    p, t = normal(9, (4, 3), (4, 3), dtype=dtype)
    t = jax.nn.softmax(t) if op is jaxbp.softmax_cross_entropy else t
    assert op(p, t).dtype == jnp.float32
    gp, gt = jax.grad(lambda p, t: op(p, t).sum(), (0, 1))(p, t)
    assert gp.dtype == dtype and gt.dtype == dtype


@pytest.mark.parametrize("impl", ["custom", "twin"])
def test_labels_outside_the_classes_give_nan_rows_not_a_silent_zero(impl):
    op = jaxbp.softmax_cross_entropy if impl == "custom" else jaxbp.softmax_cross_entropy.autodiff
    labels = jnp.array([0, 4, -1, 2, 3])
    loss = op(logits, labels)
    assert np.isnan(loss[1]) and np.isnan(loss[2])
    np.testing.assert_allclose(loss[np.array([0, 3, 4])], op(logits[np.array([0, 3, 4])], labels[np.array([0, 3, 4])]),
                               rtol=1e-15)
    assert np.isnan(loss.mean())  # what the training loop's non-finite guard sees
    grad = jax.grad(lambda o: op(o, labels)[np.array([0, 3, 4])].sum())(logits)
    assert np.all(np.isfinite(grad)) and np.all(grad[1:3] == 0)


@pytest.mark.parametrize("impl", ["custom", "twin"])
def test_ignore_index_rows_count_for_nothing(impl):
    """PyTorch's convention: ignored rows have loss 0 and gradient 0, and the mean
    over the rest is ``loss.sum() / (labels != ignore_index).sum()``."""
    op = jaxbp.softmax_cross_entropy if impl == "custom" else jaxbp.softmax_cross_entropy.autodiff
    labels = jnp.array([0, -100, 1, -100, 3])
    keep = np.array([0, 2, 4])

    def mean(o):
        return op(o, labels, ignore_index=-100).sum() / (labels != -100).sum()

    np.testing.assert_allclose(mean(logits), op(logits[keep], labels[keep]).mean(), rtol=1e-15)
    grad = jax.grad(mean)(logits)
    assert np.all(grad[np.array([1, 3])] == 0)
    np.testing.assert_allclose(grad[keep], jax.grad(lambda o: op(o, labels[keep]).mean())(logits[keep]),
                               rtol=1e-14)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "euclidean_loss", "mse"])
def test_nan_in_a_row_gives_that_row_nan(name):
    op = getattr(jaxbp, name)
    pred = logits.at[1, 2].set(jnp.nan)
    target = jnp.abs(soft) if name == "softmax_cross_entropy" else soft
    for f in (op, op.autodiff):
        loss = f(pred, target)
        assert np.isnan(loss[1]) and np.all(np.isfinite(np.delete(np.asarray(loss), 1)))


@pytest.mark.parametrize("logits, label, ignore_index, expected", [
    ([[-jnp.inf, 0.0, 1.0]], 2, None, 0.31326168751822286),   # log(1 + e⁻¹)
    ([[-jnp.inf, 0.0, 1.0]], 0, 0, 0.0),                        # an ignored row is 0, whatever its logits
    ([[3e38, 3e38, -3e38]], 0, None, 0.6931471805599453),       # log 2
], ids=["minus_inf_logit", "ignored_row_with_minus_inf", "huge_logits_float32"])
def test_integer_labels_take_the_label_term_so_infinite_logits_are_no_nan(logits, label, ignore_index, expected):
    """One-hot × log-softmax would make 0·(−∞) = NaN in the other columns."""
    o = jnp.asarray(logits, jnp.float32 if abs(logits[0][0]) > 1e30 else jnp.float64)
    labels = jnp.array([label])
    loss = jaxbp.softmax_cross_entropy(o, labels, ignore_index=ignore_index)
    np.testing.assert_allclose(loss, [expected], rtol=1e-6)
    for op in (jaxbp.softmax_cross_entropy, jaxbp.softmax_cross_entropy.autodiff):
        g = jax.grad(lambda o: op(o, labels, ignore_index=ignore_index).sum())(o)
        assert np.isfinite(np.asarray(g)).all(), g
