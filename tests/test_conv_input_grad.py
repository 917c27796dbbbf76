"""The CPU input-gradient path for convolutions used by DeepFool: same values as autograd's."""
import pytest
import torch
from torch import nn

from leanrobust.attacks.conv_input_grad import conv_input_grad, input_grad_convs


@pytest.mark.parametrize("cin", [1, 3, 8])
@pytest.mark.parametrize("k,pad", [(3, 0), (3, 1), (5, 2)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_conv_input_grad_equals_autograd(cin, k, pad, layout):
    torch.manual_seed(0)
    x = torch.randn(4, cin, 11, 9).contiguous(memory_format=layout).requires_grad_(True)
    w = torch.randn(6, cin, k, k).contiguous(memory_format=layout)
    out = torch.nn.functional.conv2d(x, w, padding=pad)
    g = torch.randn_like(out)
    ref = torch.autograd.grad(out, x, g)[0]
    got = conv_input_grad(g, w, x.shape, (pad, pad))
    assert got.shape == x.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2), nn.Flatten(), nn.LazyLinear(3))


def test_context_same_values_input_grads_only_and_restores():
    torch.manual_seed(0)
    net = _net()
    x = torch.rand(5, 1, 12, 12, requires_grad=True)
    ref_out = net(x)
    ref = torch.autograd.grad(ref_out[:, 1].sum(), x)[0]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with input_grad_convs(net):
        assert "forward" in vars(net[0]) and "forward" in vars(net[2])
        assert "forward" not in vars(net[4])  # stride 2: left to PyTorch
        out = net(x)
        torch.testing.assert_close(out, ref_out)
        got = torch.autograd.grad(out[:, 1].sum(), x)[0]
        out = net(x)
        out[:, 1].sum().backward()
        assert net[0].weight.grad is None and net[2].weight.grad is None  # input gradients only
        assert net[4].weight.grad is not None
        with torch.no_grad():
            torch.testing.assert_close(net(x), ref_out)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert all("forward" not in vars(m) for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    net.zero_grad()
    net(x)[:, 1].sum().backward()  # weights learn again after the context
    assert net[0].weight.grad is not None


def test_context_restores_on_error():
    net = _net()
    net(torch.rand(1, 1, 12, 12))
    with pytest.raises(RuntimeError):
        with input_grad_convs(net):
            raise RuntimeError("attack failed")
    assert all("forward" not in vars(m) for m in net.modules())


def test_context_leaves_autocast_to_pytorch():
    torch.manual_seed(0)
    net = _net()
    x = torch.rand(2, 1, 12, 12, requires_grad=True)
    net(x)
    with input_grad_convs(net):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        out.float().sum().backward()  # PyTorch's conv under autocast: weights get gradients
        assert net[0].weight.grad is not None
