"""sslengine: self-supervised pretraining of vision backbones, and its evaluation."""

__version__ = "0.1.0"
