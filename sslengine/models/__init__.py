"""Backbones with named feature taps, and the heads methods put on top of them."""

from sslengine.models.backbones import BACKBONES, TAPS, Backbone, build_backbone
from sslengine.models.heads import projection_mlp

__all__ = ["BACKBONES", "TAPS", "Backbone", "build_backbone", "projection_mlp"]
