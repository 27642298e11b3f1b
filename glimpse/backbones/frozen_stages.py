"""mmdetection's ``frozen_stages`` and ``norm_eval`` for the detection backbones (ResNet,
MobileNetV2): one base class, each backbone saying only which modules its frozen stages are."""

from __future__ import annotations

import abc

from torch import nn

__all__ = ["FrozenStagesBackbone"]


class FrozenStagesBackbone(nn.Module, metaclass=abc.ABCMeta):
    """Base of a backbone with frozen stages and ``norm_eval``.

    The modules of :meth:`frozen_modules` get ``requires_grad=False`` (the subclass calls
    :meth:`freeze_stages` once built) and stay in eval mode through every ``train()``; with
    ``norm_eval`` every BatchNorm also stays in eval mode in training (statistics fixed, affine
    parameters still trained).
    """

    norm_eval: bool

    @abc.abstractmethod
    def frozen_modules(self) -> list[nn.Module]:
        """The modules of the frozen stages (each subclass lists its own)."""

    def freeze_stages(self) -> None:
        """Put the frozen stages in eval mode with ``requires_grad=False``."""
        for module in self.frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenStagesBackbone:
        """Switch mode, then keep frozen stages and (with ``norm_eval``) BatchNorms in eval."""
        super().train(mode)
        self.freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self
