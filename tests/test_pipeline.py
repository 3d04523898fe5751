"""The data pipeline on the device (jaxbp/train/pipeline.py): the epoch's
order, and the random shifts and flips training applies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp.train.pipeline import epoch_order, random_flip, random_shift


def _images(n=64, c=2, h=5, w=6):
    # Distinct positive values: a shifted or mirrored image is recognizable.
    return jnp.arange(1, n * c * h * w + 1, dtype=jnp.float32).reshape(n, c, h, w)


def _shifted(img, dy, dx):
    """``img`` moved down by ``dy`` and right by ``dx`` pixels, zeros coming in."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_moves_each_image_by_at_most_max_shift_with_zeros_coming_in(max_shift):
    x = np.asarray(_images())
    y = np.asarray(random_shift(jax.random.key(0), jnp.asarray(x), max_shift))
    offsets = set()
    r = range(-max_shift, max_shift + 1)
    for img, out in zip(x, y):
        found = [(dy, dx) for dy in r for dx in r if np.array_equal(_shifted(img, dy, dx), out)]
        assert len(found) == 1, found   # exactly one shift explains the image
        offsets |= set(found)
    assert len(offsets) > (2 * max_shift + 1) ** 2 // 2   # the shifts are drawn, not fixed


def test_random_shift_of_zero_is_the_identity_and_a_key_gives_the_same_shifts():
    x = _images()
    np.testing.assert_array_equal(random_shift(jax.random.key(3), x, 0), x)
    np.testing.assert_array_equal(random_shift(jax.random.key(3), x, 2), random_shift(jax.random.key(3), x, 2))


def test_random_flip_mirrors_about_half_of_the_images():
    x = np.asarray(_images())
    y = np.asarray(random_flip(jax.random.key(1), jnp.asarray(x)))
    mirrored = [np.array_equal(out, img[..., ::-1]) for img, out in zip(x, y)]
    kept = [np.array_equal(out, img) for img, out in zip(x, y)]
    assert all(m != k for m, k in zip(mirrored, kept))   # each image is one or the other
    assert 16 <= sum(mirrored) <= 48


def test_epoch_order_is_a_permutation_per_epoch_the_same_within_one():
    key, n, b = jax.random.key(0), 50, 8
    first = np.asarray(epoch_order(key, 0, n, b))
    assert first.shape == (6, 8) and len(set(first.ravel())) == 48 and first.max() < n
    np.testing.assert_array_equal(epoch_order(key, 5, n, b), first)    # step 5: still epoch 0
    assert not np.array_equal(epoch_order(key, 6, n, b), first)        # step 6: epoch 1
