"""Distribution Matching condensation: it lowers its matching loss, starts from real images, and
its siamese augmentations are differentiable and shared between batches."""
import numpy as np
import pytest
import torch

from leanrobust.selection.dm import DSA_STRATEGY, apply_dsa, convnet_embedder, dm_condense, sample_dsa


def tiny_data(n=40, size=16, seed=0):
    """Two classes of 16x16 images: a bright square top-left (class 0) or bottom-right (class 1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.zeros(n, 1, size, size)
    for i in range(n):
        cy, cx = (4, 4) if y[i] == 0 else (11, 11)
        cy += int(torch.randint(-2, 3, (1,), generator=g))
        cx += int(torch.randint(-2, 3, (1,), generator=g))
        x[i, 0, cy - 2:cy + 2, cx - 2:cx + 2] = 1
    x = 0.8 * x + 0.2 * torch.rand(x.shape, generator=g)
    return (x * 255).round().to(torch.uint8), y


def test_dm_lowers_matching_loss_and_is_reproducible():
    x, y = tiny_data()
    imgs, labels, hist = dm_condense(x, y, ipc=2, iterations=60, batch_real=16, seed=0, width=16)
    assert imgs.shape == (4, 1, 16, 16) and imgs.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1] and len(hist) == 60 and np.isfinite(hist).all()
    assert np.mean(hist[-10:]) < 0.8 * np.mean(hist[:10])
    again, _, hist2 = dm_condense(x, y, ipc=2, iterations=60, batch_real=16, seed=0, width=16)
    assert torch.equal(imgs, again) and hist == hist2


def test_dm_resumes_from_its_state_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """A condensation killed mid-way and run again with the same state file ends with the images and loss
    history of one that was never interrupted; a state of other settings is refused, not silently reused."""
    x, y = tiny_data()
    kw = dict(ipc=2, batch_real=16, seed=0, width=8)
    whole, _, hist = dm_condense(x, y, iterations=12, **kw)
    state = tmp_path / "dm.state.pt"
    import leanrobust.selection.dm as dm

    real_redraw, calls = dm._redraw, []

    def dies_at_iteration_8(net, g):  # the process is killed during iteration 8 (after the state at 5)
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        real_redraw(net, g)

    monkeypatch.setattr(dm, "_redraw", dies_at_iteration_8)
    with pytest.raises(KeyboardInterrupt):
        dm_condense(x, y, iterations=12, state=state, state_every=5, **kw)
    monkeypatch.setattr(dm, "_redraw", real_redraw)
    assert torch.load(state, weights_only=True)["iterations"] == 5
    resumed, _, hist2 = dm_condense(x, y, iterations=12, state=state, state_every=5, **kw)
    assert torch.equal(resumed, whole) and hist2 == pytest.approx(hist, rel=0, abs=0)
    with pytest.raises(ValueError, match="other settings"):
        dm_condense(x, y, iterations=12, state=state, **{**kw, "batch_real": 8})
    with pytest.raises(ValueError, match="more than"):
        dm_condense(x, y, iterations=4, state=state, **kw)


def test_dm_initialises_from_real_images_of_the_class():
    x, y = tiny_data()
    imgs, labels, hist = dm_condense(x, y, ipc=3, iterations=0, seed=1, width=8)
    assert hist == []
    for img, lab in zip(imgs, labels):
        same = x[y == lab]
        assert (same.int() - img.int()).abs().flatten(1).max(1).values.min() <= 1  # a real image (rounding)


@pytest.mark.parametrize("name", DSA_STRATEGY)
def test_dsa_is_shared_and_differentiable(name):
    g = torch.Generator().manual_seed(3)
    a = torch.rand(5, 2, 12, 12, requires_grad=True)
    b = torch.rand(3, 2, 12, 12)
    for _ in range(20):  # draw until this group comes up
        aug = sample_dsa(g, (12, 12))
        if aug["name"] == name:
            break
    assert aug["name"] == name
    both = apply_dsa(torch.cat([a, b]), aug)
    assert both.shape == (8, 2, 12, 12)
    # siamese: the same parameters on two batches = one transform applied to their union
    torch.testing.assert_close(torch.cat([apply_dsa(a, aug), apply_dsa(b, aug)]), both)
    apply_dsa(a, aug).square().sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_convnet_embedder_shape():
    net = convnet_embedder(1, width=128, depth=3)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 128 * 3 * 3)


@pytest.mark.parametrize("kw, name", [({"ipc": 0}, "ipc"), ({"ipc": 21}, "ipc"), ({"ipc": 1, "iterations": -1}, "iterations"),
                                      ({"ipc": 1, "batch_real": 0}, "batch_real"), ({"ipc": 1, "lr": 0.0}, "lr")])
def test_dm_bad_arguments_raise(kw, name):
    x, y = tiny_data()
    kw = {"iterations": 1, **kw}
    with pytest.raises(ValueError, match=name):
        dm_condense(x, y, seed=0, width=8, **kw)
    with pytest.raises(ValueError, match="uint8"):
        dm_condense(x.float() / 255, y, ipc=1, iterations=1, seed=0)
