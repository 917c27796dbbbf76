"""PassCounter: every forward + backward pass is counted once, extra backward passes through the same
forward (DeepFool's per-class gradients) each count again, and no-grad forwards count apart."""
import torch
from torch import nn

from leanrobust.accounting import PassCounter
from leanrobust.attacks import deepfool


def test_counts_forward_backward_extra_backward_and_no_grad_passes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    counter = PassCounter()
    counter.attach(model)
    x = torch.rand(5, 1, 2, 4)
    model(x).sum().backward()  # one forward + backward
    assert counter.grad_evals == 5
    xa = x.clone().requires_grad_(True)
    z = model(xa)
    for j in range(3):  # three backward passes from one forward
        torch.autograd.grad(z[:, j].sum(), xa, retain_graph=j < 2)
    assert counter.grad_evals == 5 + 3 * 5
    with torch.no_grad():
        model(x)
    assert counter.forward_evals == 5 and counter.grad_evals == 20
    with counter.paused():
        model(x).sum().backward()
    assert counter.grad_evals == 20


def test_deepfool_counts_its_class_gradients():
    """One iteration on a 4-class linear model: 1 forward, 3 class-gradient backward passes, then a
    no-grad check; every image crosses in one step (linear boundary)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    counter = PassCounter()
    counter.attach(model)
    x = torch.rand(7, 6)
    res = deepfool(model, x, norm="l2", steps=1, candidates=4)
    assert bool(res.converged.all())
    assert counter.grad_evals == 7 * 3 and counter.forward_evals == 7


def test_counts_resumed_from_an_older_rule_keep_its_version():
    from leanrobust.accounting import GRAD_EVALS_VERSION

    c = PassCounter()
    assert c.state_dict()["grad_evals_version"] == GRAD_EVALS_VERSION == 2
    c.load_state_dict({"grad_evals": 10, "forward_evals": 2})  # a checkpoint from before the version
    assert c.version == 1 and c.state_dict() == {"grad_evals": 10, "forward_evals": 2, "grad_evals_version": 1}
