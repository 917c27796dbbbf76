"""Faster input gradients through convolutions on the CPU, for attacks that differentiate with
respect to the input only (DeepFool). oneDNN's backward-data kernel is slow for the first layer of
a grey-scale network (1 input channel: 4x slower than a GEMM plus 9 shifted adds) and slower than
its own transposed convolution elsewhere (benchmarks/results/deepfool_speed.md)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

SMALL_IN = 4  # at most this many input channels: GEMM + shifted adds instead of a transposed conv


def conv_input_grad(g: torch.Tensor, weight: torch.Tensor, in_shape: torch.Size, padding: tuple[int, int]) -> torch.Tensor:
    """d(conv2d(x, weight, stride 1, padding))/dx applied to the output gradient g, for x of
    in_shape (N, Cin, H, W). Few input channels: each output gradient times the kernel is one
    GEMM, (N*Ho*Wo, Cout) @ (Cout, Cin*kh*kw), then the kh*kw shifted windows are added up;
    otherwise the transposed convolution."""
    n, cin, h, w = in_shape
    cout, _, kh, kw = weight.shape
    ph, pw = padding
    if cin > SMALL_IN:
        return F.conv_transpose2d(g, weight, padding=(ph, pw))
    ho, wo = g.shape[2], g.shape[3]
    cols = g.permute(0, 2, 3, 1).reshape(-1, cout) @ weight.reshape(cout, -1)
    cols = cols.view(n, ho, wo, cin, kh, kw)
    full = g.new_zeros(n, h + 2 * ph, w + 2 * pw, cin)  # NHWC: each window add is one strided view
    for i in range(kh):
        for j in range(kw):
            full[:, i:i + ho, j:j + wo] += cols[..., i, j]
    return full[:, ph:ph + h, pw:pw + w].permute(0, 3, 1, 2)


class _InputGradConv2d(torch.autograd.Function):
    """conv2d (stride 1, dilation 1, groups 1) whose backward returns the input's gradient only."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.in_shape, ctx.padding = x.shape, padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, g):
        (weight,) = ctx.saved_tensors
        return conv_input_grad(g, weight, ctx.in_shape, ctx.padding), None, None, None


def _eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and "forward" not in vars(m) and m.stride == (1, 1) and m.dilation == (1, 1)
            and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str) and m.weight.device.type == "cpu")


@contextlib.contextmanager
def input_grad_convs(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, every plain stride-1 nn.Conv2d of the model on the CPU passes gradients to its
    input only (its weight and bias get none) through `conv_input_grad`; forward values are
    unchanged (under CPU autocast or mixed dtypes PyTorch's own convolution runs). For attacks,
    which differentiate with respect to the input; the modules' own forward is restored on exit."""
    patched = [m for m in model.modules() if _eligible(m)]

    def fast_forward(m: nn.Conv2d):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if (torch.is_grad_enabled() and x.requires_grad and x.dtype == m.weight.dtype
                    and not torch.is_autocast_enabled("cpu")):
                return _InputGradConv2d.apply(x, m.weight.detach(),
                                              None if m.bias is None else m.bias.detach(), m.padding)
            return F.conv2d(x, m.weight, m.bias, padding=m.padding)
        return forward

    for m in patched:
        m.forward = fast_forward(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward
