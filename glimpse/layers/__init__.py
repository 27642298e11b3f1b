"""nn.Modules on top of glimpse.ops and torchvision.ops."""

from glimpse.layers.feature_adaption import FeatureAdaption

__all__ = ["FeatureAdaption"]
