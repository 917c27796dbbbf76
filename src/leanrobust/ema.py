"""Exponential moving average of weights (Wang et al. 2023: decay min(tau, (1+t)/(10+t)));
buffers such as BatchNorm statistics are copied, not averaged."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, tau: float):
        self.tau = tau
        self.steps = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.tau, (1 + self.steps) / (10 + self.steps))
        ema_p = dict(self.model.named_parameters())
        for name, p in model.named_parameters():
            ema_p[name].lerp_(p.detach(), 1.0 - decay)
        ema_b = dict(self.model.named_buffers())
        for name, b in model.named_buffers():
            ema_b[name].copy_(b)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps, "model": self.model.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.steps = int(d["steps"])
        self.model.load_state_dict(d["model"])
