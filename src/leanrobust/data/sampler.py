"""Batches of selection positions per epoch: plain shuffling, a fixed generated share per batch
(proxy data), or draws proportional to per-sample weights (importance sampling of a weighted
selection); deterministic in (epoch, seed) and sharded across DDP ranks from one global draw."""
from __future__ import annotations

import math

import torch


class MixingSampler:
    """`epoch(e, seed)` -> this rank's list of LongTensor positions (indices into `is_generated`), one per batch.

    gen_fraction=None: a permutation of all positions cut into batches (ceil(n/B), or floor with drop_last).
    gen_fraction=f: every batch holds [f*B] generated (rounded half up) and B - [f*B] real positions; an epoch is
    ceil(n_real / B) batches (floor with drop_last; at least 1), the real set's size over the batch size as
    in Wang et al. 2023 (so an epoch sees (1-f) of the real set; with f=1, still n_real / B, so a
    generated-only run takes as many steps as a real-only one; n_gen / B without real data). Real and
    generated positions each cycle through fresh permutations.
    weights=w (no mixing): every batch draws B positions with replacement, P(i) = w_i / sum(w), as many
    batches as plain shuffling; training them with weight 1 has the weighted loss's expected gradient
    without its variance when a few weights are large (a covering centre standing for hundreds of points).
    With world_size > 1 rank r takes global batches r, r + world_size, ...; a partial last batch and tail
    batches that do not divide evenly are dropped, so every rank has len(sampler) batches of B."""

    def __init__(self, is_generated: torch.Tensor, batch_size: int, gen_fraction: float | None = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, weights: torch.Tensor | None = None):
        is_generated = torch.as_tensor(is_generated, dtype=torch.bool).flatten().cpu()
        if batch_size < 1:
            raise ValueError(f"MixingSampler: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"MixingSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.gen_pos = is_generated.nonzero().flatten()
        self.real_pos = (~is_generated).nonzero().flatten()
        self.n, self.batch_size, self.gen_fraction = len(is_generated), batch_size, gen_fraction
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64).flatten().cpu()
            if gen_fraction is not None:
                raise ValueError("MixingSampler: weighted sampling and a generated share per batch cannot be combined")
            if w.shape != (self.n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"MixingSampler: weights must be {self.n} finite values >= 0 with a positive sum")
            self.weights = w
        n_real, n_gen = len(self.real_pos), len(self.gen_pos)
        if gen_fraction is None:
            self.gen_per_batch = self.real_per_batch = None
            # several ranks: whole batches only, so every rank's step averages the same number of samples
            # (DDP averages the ranks' gradients equally); the dropped tail changes with each epoch's shuffle
            whole = drop_last or world_size > 1
            n_global = self.n // batch_size if whole else math.ceil(self.n / batch_size)
        else:
            if not 0.0 <= gen_fraction <= 1.0:
                raise ValueError(f"MixingSampler: gen_fraction must be in [0, 1], got {gen_fraction}")
            self.gen_per_batch = math.floor(gen_fraction * batch_size + 0.5)  # half up (round() goes to even)
            self.real_per_batch = batch_size - self.gen_per_batch
            if 0.0 < gen_fraction < 1.0 and not (self.gen_per_batch and self.real_per_batch):
                raise ValueError(f"MixingSampler: gen_fraction={gen_fraction} of a batch of {batch_size} gives "
                                 f"{self.gen_per_batch} generated and {self.real_per_batch} real samples per batch; "
                                 "use a larger batch or a fraction of 0 or 1 to mean none or only generated data")
            if self.gen_per_batch and not n_gen:
                raise ValueError(f"MixingSampler: gen_fraction={gen_fraction} but there are no generated positions")
            if self.real_per_batch and not n_real:
                raise ValueError(f"MixingSampler: gen_fraction={gen_fraction} needs real positions, there are none")
            n_ref = n_real if n_real else n_gen  # the real set's size, also when f=1 trains on generated only
            n_global = max(1, n_ref // batch_size if drop_last else math.ceil(n_ref / batch_size))
        self.batches_per_rank = n_global // world_size
        if self.batches_per_rank == 0:
            raise ValueError(f"MixingSampler: {n_global} batch(es) per epoch cannot be shared by {world_size} ranks")
        self.n_global = self.batches_per_rank * world_size

    def __len__(self) -> int:
        return self.batches_per_rank

    @staticmethod
    def _draw(pos: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        """k positions cycling through fresh permutations of `pos` (no repeats while k <= len(pos))."""
        reps = -(-k // len(pos))
        return torch.cat([pos[torch.randperm(len(pos), generator=g)] for _ in range(reps)])[:k]

    def epoch(self, epoch: int, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (1 << 63))
        B, G = self.batch_size, self.n_global
        if self.weights is not None:
            batches = list(torch.multinomial(self.weights, G * B, replacement=True, generator=g).view(G, B).unbind(0))
        elif self.gen_fraction is None:
            batches = list(torch.randperm(self.n, generator=g).split(B))[:G]
        else:
            parts = []
            if self.real_per_batch:
                parts.append(self._draw(self.real_pos, G * self.real_per_batch, g).view(G, -1))
            if self.gen_per_batch:
                parts.append(self._draw(self.gen_pos, G * self.gen_per_batch, g).view(G, -1))
            batches = list(torch.cat(parts, 1).unbind(0))
        return batches[self.rank::self.world_size]
