"""One small pure function per loss, each citing the paper and equation it implements.

Every docstring states the shapes and the distributed convention (which ranks' anchors are
scored, how gradients are reduced); all agree that W processes with batch N each give the same
loss (mean over ranks) and the same DDP-averaged gradients as one process with batch W * N.
"""

from sslengine.losses.barlow_twins import barlow_twins
from sslengine.losses.info_nce import info_nce
from sslengine.losses.nt_xent import nt_xent
from sslengine.losses.pirl import pirl_nce
from sslengine.losses.pretext import pretext_cross_entropy
from sslengine.losses.sinkhorn import sinkhorn_knopp
from sslengine.losses.swav import swav_loss

__all__ = [
    "barlow_twins",
    "info_nce",
    "nt_xent",
    "pirl_nce",
    "pretext_cross_entropy",
    "sinkhorn_knopp",
    "swav_loss",
]
