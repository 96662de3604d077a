import numpy as np
import pytest
import torch

from core.data import DataError, ImageDataset, ImageLoader, flip_for
from core.data.loader import scale_to_unit, shift_flip


def make_dataset(n=23, shape=(3, 6, 5), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return ImageDataset(images, np.arange(n, dtype=np.int64) % 10, 10, "toy")


def test_batches_shapes_scaling_and_labels():
    data = make_dataset()
    loader = ImageLoader(data, batch_size=5, shuffle=False)
    assert len(loader) == 5 and loader.num_examples == 23
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    x, y = batches[1]
    assert x.dtype == torch.float32 and x.shape == (5, 3, 6, 5) and y.dtype == torch.int64
    expected = data.images[5:10].astype(np.float32) / 255 * 2 - 1
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    assert y.tolist() == data.labels[5:10].tolist()


def test_scale_endpoints():
    x = scale_to_unit(np.array([0, 51, 255], dtype=np.uint8))
    np.testing.assert_allclose(x.numpy(), [-1.0, 51 / 255 * 2 - 1, 1.0], atol=1e-7)


def test_epochs_reshuffle_deterministically():
    data = make_dataset()
    loader = ImageLoader(data, batch_size=4, seed=7)
    e0 = torch.cat([y for _, y in loader])
    e1 = torch.cat([y for _, y in loader])
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == sorted(data.labels.tolist())
    x0 = torch.cat([x for x, _ in ImageLoader(data, batch_size=4, seed=7)])
    x0_again = torch.cat([x for x, _ in ImageLoader(data, batch_size=4, seed=7)])
    x1 = torch.cat([x for x, _ in loader])
    assert torch.equal(x0, x0_again)  # same seed, same epoch -> same order
    assert not torch.equal(x0, x1)  # a later epoch has a new order
    other = torch.cat([x for x, _ in ImageLoader(data, batch_size=4, seed=8)])
    assert not torch.equal(x0, other)


def test_indices_subset_and_drop_last():
    data = make_dataset()
    idx = np.array([3, 4, 8, 15, 16, 22, 0])
    loader = ImageLoader(data, indices=idx, batch_size=3, drop_last=True)
    assert loader.num_examples == 7 and len(loader) == 2
    seen = torch.cat([y for _, y in loader]).tolist()
    assert len(seen) == 6 and set(seen) <= set(data.labels[idx].tolist())


def test_bad_indices_and_batch_size():
    data = make_dataset()
    with pytest.raises(DataError, match=r"toy: indices must be a 1-D array within \[0, 23\)"):
        ImageLoader(data, indices=np.array([0, 23]))
    with pytest.raises(DataError, match=r"batch_size must be >= 1"):
        ImageLoader(data, batch_size=0)


def naive_shift(img, dy, dx, mirror):
    """Reference: out[i, j] = img[clip(i - dy), clip(j - dx)], then optionally mirrored."""
    _, h, w = img.shape
    out = np.empty_like(img)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = img[:, min(max(i - dy, 0), h - 1), min(max(j - dx, 0), w - 1)]
    return out[:, :, ::-1] if mirror else out


def matching_transforms(src, out, s_h, s_w):
    return [
        (dy, dx, m)
        for dy in range(-s_h, s_h + 1)
        for dx in range(-s_w, s_w + 1)
        for m in (False, True)
        if np.array_equal(naive_shift(src, dy, dx, m), out)
    ]


@pytest.mark.parametrize("flip", [False, True])
def test_shift_flip_matches_reference(flip):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 2, 20, 14), dtype=np.uint8)  # s_h = 3, s_w = 2
    out = shift_flip(images, np.random.default_rng(1), flip=flip)
    assert out.shape == images.shape and out.dtype == np.uint8
    found = []
    for src, dst in zip(images, out):
        match = matching_transforms(src, dst, 3, 2)
        assert match, "output is not an edge-clamped shift (+ mirror) of its input"
        found.append(match[0])
    mirrored = {m for _, _, m in found}
    assert mirrored == ({False, True} if flip else {False})
    assert {dy for dy, _, _ in found} == set(range(-3, 4))
    assert {dx for _, dx, _ in found} == set(range(-2, 3))


def test_augment_changes_batches_but_not_labels():
    data = make_dataset(n=10, shape=(3, 32, 32))
    plain = list(ImageLoader(data, batch_size=10, shuffle=False, seed=3))[0]
    aug = list(ImageLoader(data, batch_size=10, shuffle=False, seed=3, augment=True))[0]
    assert torch.equal(plain[1], aug[1])
    assert not torch.equal(plain[0], aug[0])
    assert aug[0].min() >= -1 and aug[0].max() <= 1


def test_docstring_examples_and_flip_choice():
    import doctest

    import core.data.loader

    assert doctest.testmod(core.data.loader).failed == 0
    assert [flip_for(n) for n in ("cifar10", "svhn", "mnist", "digits")] == [
        True,
        False,
        False,
        False,
    ]
