"""Attacks as short functions of tensors in [0,1] with per-sample eps: FGSM-RS, PGD (Linf/L2,
CE/CW, kappa), TRADES' KL attack, DeepFool (margins) and an AutoAttack adapter."""
from .autoattack import AutoAttackResult, autoattack
from .deepfool import DeepFoolResult, deepfool
from .fgsm import fgsm_rs
from .pgd import pgd
from .trades_kl import trades_kl

__all__ = ["fgsm_rs", "pgd", "trades_kl", "deepfool", "DeepFoolResult", "autoattack", "AutoAttackResult"]
