"""A memory bank of per-image embeddings (Wu et al. 2018; PIRL, Misra & van der Maaten 2020).

PIRL keeps one L2-normalised embedding ``m_I`` per training image, updated from the image
features ``f(v_I)`` as ``m_I <- normalise(0.5 m_I + 0.5 f(v_I))`` and used as the positive's
target and as the source of negatives in the NCE loss (``sslengine.losses.pirl_nce``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslengine.distributed import gather_no_grad

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    """(size, dim) bank of unit vectors, a registered buffer so checkpoints capture it.

    Args:
        size: number of entries (the dataset size |D|; entry i belongs to image i).
        dim: embedding dimension.
        momentum: weight of the old entry in an update (0.5 in PIRL).
        seed: seeds the random unit-vector initialisation, so every rank of a distributed run
            starts from the same bank without a broadcast.

    Distributed convention: ``update`` gathers indices and features from all ranks first (rank
    order, then batch order; equal local batch sizes), so every rank applies the same update and
    the banks stay identical. ``get`` and ``sample_negatives`` are local.
    """

    bank: Tensor

    def __init__(self, size: int, dim: int, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"size and dim must be positive, got size={size}, dim={dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.size, self.dim, self.momentum = size, dim, momentum
        generator = torch.Generator().manual_seed(seed)
        init = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.register_buffer("bank", init)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, momentum={self.momentum}"

    def get(self, indices: Tensor) -> Tensor:
        """Entries ``m_I`` for (N,) ``indices`` -> (N, dim), a copy detached from the bank."""
        return self.bank[indices.to(self.bank.device)].clone()

    def sample_indices(
        self,
        n: int,
        generator: torch.Generator | None = None,
        exclude: Tensor | None = None,
    ) -> Tensor:
        """Uniform random bank indices, with replacement.

        Without ``exclude``: (n,). With ``exclude`` (B,): (B, n), row b drawn uniformly from the
        ``size - 1`` entries other than ``exclude[b]`` (the image's own entry is not a negative).
        Draws on the generator's device, returns on the bank's device.
        """
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if exclude is None:
            idx = torch.randint(0, self.size, (n,), generator=generator, device=gen_device)
            return idx.to(self.bank.device)
        if self.size < 2:
            raise ValueError("cannot exclude an entry from a bank of size 1")
        exclude = exclude.to(self.bank.device).long()
        # Uniform over size - 1 values, then skip the excluded one: exact, no rejection loop.
        idx = torch.randint(
            0, self.size - 1, (exclude.shape[0], n), generator=generator, device=gen_device
        ).to(self.bank.device)
        return idx + (idx >= exclude[:, None]).long()

    def sample_negatives(
        self,
        n: int,
        generator: torch.Generator | None = None,
        exclude: Tensor | None = None,
    ) -> Tensor:
        """Negatives ``m_I'``: (n, dim) shared by the batch, or (B, n, dim) with ``exclude``.

        See :meth:`sample_indices` for the sampling.
        """
        return self.bank[self.sample_indices(n, generator, exclude)].clone()

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor) -> None:
        """``m_i <- normalise(momentum * m_i + (1 - momentum) * normalise(f_i))`` for each i.

        Args:
            indices: (N,) bank indices of this rank's images.
            features: (N, dim) their image features f(v_I) (normalised here; no gradient).

        Every new entry is computed from the bank as it was before this call. When an index
        occurs more than once (e.g. a distributed sampler padding the last batch), the LAST
        occurrence in gathered order wins, the same as a loop assigning in order; this is
        chosen explicitly because an indexed write with duplicates is nondeterministic on GPU.
        """
        if indices.dim() != 1 or features.shape != (indices.shape[0], self.dim):
            raise ValueError(
                f"indices must be (N,) and features (N, {self.dim}); got "
                f"{tuple(indices.shape)}, {tuple(features.shape)}"
            )
        indices = gather_no_grad(indices.to(self.bank.device).long())
        features = gather_no_grad(features.detach().to(self.bank))
        unique, inverse = torch.unique(indices, return_inverse=True)
        position = torch.arange(indices.shape[0], device=indices.device)
        # max is order-independent, so the scatter is deterministic even with atomics.
        last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, position, reduce="amax")
        new = self.momentum * self.bank[unique] + (1 - self.momentum) * F.normalize(
            features[last], dim=1
        )
        self.bank[unique] = F.normalize(new, dim=1)
