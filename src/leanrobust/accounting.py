"""Honest compute accounting: every sample the model sees is counted by a forward hook,
so attacks, scoring and selection passes are included without any plumbing."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


# 2: extra backward passes through one forward count (DeepFool); 1 (summaries without the key) did not
GRAD_EVALS_VERSION = 2


@dataclass
class PassCounter:
    """Training cost in samples. grad_evals: forward + backward passes, i.e. samples forwarded with grad
    enabled, plus one more per extra backward pass through the same forward (DeepFool's C-1 class
    gradients from one forward count C-1); forward_evals: samples forwarded without grad (clean checks)."""

    grad_evals: int = 0
    forward_evals: int = 0
    active: bool = True
    version: int = GRAD_EVALS_VERSION  # lowered on resuming counts made under an older rule

    def attach(self, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
        def hook(_module, inputs, output):
            if not self.active:
                return
            n = int(inputs[0].shape[0]) if inputs and torch.is_tensor(inputs[0]) else 0
            if torch.is_grad_enabled():
                self.grad_evals += n
                out = output if torch.is_tensor(output) else None
                if out is not None and out.requires_grad:
                    out.register_hook(self._backward_counter(n))
            else:
                self.forward_evals += n

        return model.register_forward_hook(hook)

    def _backward_counter(self, n: int):
        """A hook on one forward's output: its first backward pass is already counted, each further one adds n."""
        passes = 0

        def on_backward(_grad):
            nonlocal passes
            passes += 1
            if passes > 1:
                self.grad_evals += n

        return on_backward

    def paused(self) -> contextlib.AbstractContextManager:
        """Passes made inside are not counted (validation and test evaluation)."""
        return self._active(False)

    def counting(self) -> contextlib.AbstractContextManager:
        """Passes made inside are counted (a counter that is off by default, e.g. the validation one)."""
        return self._active(True)

    @contextlib.contextmanager
    def _active(self, on: bool) -> Iterator[None]:
        prev, self.active = self.active, on
        try:
            yield
        finally:
            self.active = prev

    def state_dict(self) -> dict[str, int]:
        return {"grad_evals": self.grad_evals, "forward_evals": self.forward_evals, "grad_evals_version": self.version}

    def load_state_dict(self, d: dict) -> None:
        self.grad_evals = int(d.get("grad_evals", 0))
        self.forward_evals = int(d.get("forward_evals", 0))
        self.version = min(int(d.get("grad_evals_version", 1)), GRAD_EVALS_VERSION)  # checkpoints before it: rule 1
