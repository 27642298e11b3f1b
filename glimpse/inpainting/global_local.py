"""Global&Local inpainting (Iizuka et al., SIGGRAPH 2017) as mmediting's ``base_gl`` /
``gl_256x256_8x12_places`` configures it (reference B3), with CARAFE in place of the decoder's
two stride-2 transposed convolutions.

Generator (every conv 'conv (no bias) -> BN -> ReLU' unless said otherwise; widths for
``base_width`` 64):

* encoder: 5x5 4 -> 64; 3x3 s2 -> 128; 3x3 128; 3x3 s2 -> 256; 3x3 256 x2 (input: the masked
  image in [-1, 1] and the hole mask);
* dilated neck: four 3x3 256 -> 256 convs with dilation 2, 4, 8, 16;
* decoder: 3x3 256 x2; **up1** 256 -> 128 (x2); 3x3 128; **up2** 128 -> 64 (x2); 3x3 64 -> 32;
  3x3 32 -> 3 with bias, no BN, output clipped to [-1, 1].

``up1`` / ``up2`` are 4x4 stride-2 transposed convs in mmediting. With ``upsampler="carafe"``
(or any Table 2 name) each becomes that upsampler at x2 followed by a 1x1 conv-BN-ReLU that
halves the channels (CARAFE keeps the channel count; how the paper changed the width is not
published, so glimpse makes this choice).

Discriminators (:class:`GLDiscriminators`): a global one on the whole image (6 convs 5x5 s2,
widths 64..512) and a local one on a crop around the hole (5 convs), each ending in
``fc -> 1024`` + ReLU; the two are concatenated and mapped to one logit. Losses: L1 on the hole
(weight 1.0) and the vanilla GAN loss (weight 0.001); discriminator: BCE on real and fake.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.inpainting.base import check_inpainting_inputs, composite, from_unit, to_unit
from glimpse.layers import upsampler_factory
from glimpse.losses import masked_l1_loss

__all__ = ["GL_LOSS_WEIGHTS", "GLDiscriminators", "GLGenerator", "GlobalLocal",
           "global_local", "global_local_slim", "local_crops"]

GL_LOSS_WEIGHTS = {"hole": 1.0, "gan": 0.001}


def _conv(c_in: int, c_out: int, k: int = 3, stride: int = 1, dilation: int = 1
          ) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, dilation * (k // 2), dilation,
                                   bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _up(c_in: int, c_out: int, upsampler: str | None) -> nn.Sequential:
    """mmediting's 4x4 stride-2 deconv, or ``upsampler`` x2 then a 1x1 conv to ``c_out``."""
    if upsampler is None:
        return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    return nn.Sequential(upsampler_factory(upsampler, scale_factor=2)(c_in),
                         _conv(c_in, c_out, 1))


class GLGenerator(nn.Module):
    """[B, 4, H, W] (masked image in [-1, 1], hole mask) -> [B, 3, H, W] in [-1, 1].

    Args:
        base_width: 64 (widths 64/128/256 and 32 before the output).
        upsampler: None (transposed convs) or a Table 2 name for the two x2 steps.
    """

    def __init__(self, base_width: int = 64, upsampler: str | None = None) -> None:
        super().__init__()
        c1, c2, c4 = base_width, 2 * base_width, 4 * base_width
        self.encoder = nn.Sequential(_conv(4, c1, 5), _conv(c1, c2, 3, 2), _conv(c2, c2),
                                     _conv(c2, c4, 3, 2), _conv(c4, c4), _conv(c4, c4))
        self.neck = nn.Sequential(*(_conv(c4, c4, 3, 1, d) for d in (2, 4, 8, 16)))
        self.decoder = nn.Sequential(
            _conv(c4, c4), _conv(c4, c4), _up(c4, c2, upsampler), _conv(c2, c2),
            _up(c2, c1, upsampler), _conv(c1, c1 // 2),
            nn.Conv2d(c1 // 2, 3, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.neck(self.encoder(x))).clamp(-1, 1)


class _MultiLayerDiscriminator(nn.Sequential):
    """``num_convs`` 5x5 stride-2 conv-BN-ReLU (widths 64 * 2**i up to ``max_channels``),
    flatten, fc -> ``fc_out`` + ReLU."""

    def __init__(self, num_convs: int, input_size: int, base_width: int, max_channels: int,
                 fc_out: int) -> None:
        if input_size % 2**num_convs:
            raise ValueError(f"discriminator input size {input_size} is not divisible by "
                             f"2**{num_convs}")
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(num_convs):
            c_out = min(base_width * 2**i, max_channels)
            layers.append(_conv(c_in, c_out, 5, 2))
            c_in = c_out
        side = input_size // 2**num_convs
        super().__init__(*layers, nn.Flatten(), nn.Linear(c_in * side * side, fc_out),
                         nn.ReLU(inplace=True))


class GLDiscriminators(nn.Module):
    """Global (whole image) + local (crop around the hole) discriminators -> one logit each
    pair: [B, 3, S, S], [B, 3, s, s] -> [B, 1].

    Args:
        image_size: S (256); local_size: s (128); base_width: 64; max_channels: 512.
    """

    def __init__(self, image_size: int = 256, local_size: int = 128, base_width: int = 64,
                 max_channels: int = 512, fc_out: int = 1024) -> None:
        super().__init__()
        self.global_disc = _MultiLayerDiscriminator(6, image_size, base_width, max_channels,
                                                    fc_out)
        self.local_disc = _MultiLayerDiscriminator(5, local_size, base_width, max_channels,
                                                   fc_out)
        self.fc = nn.Linear(2 * fc_out, 1)
        self.local_size = local_size

    def forward(self, images: Tensor, patches: Tensor) -> Tensor:
        return self.fc(torch.cat((self.global_disc(images), self.local_disc(patches)), 1))


def local_crops(images: Tensor, masks: Tensor, size: int) -> Tensor:
    """[B, C, H, W] -> [B, C, size, size] crops centred on each hole's bounding box, shifted to
    lie inside the image (centre of the image when a mask is empty)."""
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"local size {size} exceeds the image size {h}x{w}")
    crops = []
    for image, mask in zip(images, masks):
        ys, xs = torch.nonzero(mask[0] > 0, as_tuple=True)
        cy = (int(ys.min()) + int(ys.max()) + 1) // 2 if ys.numel() else h // 2
        cx = (int(xs.min()) + int(xs.max()) + 1) // 2 if xs.numel() else w // 2
        y0 = min(max(cy - size // 2, 0), h - size)
        x0 = min(max(cx - size // 2, 0), w - size)
        crops.append(image[:, y0:y0 + size, x0:x0 + size])
    return torch.stack(crops)


class GlobalLocal(nn.Module):
    """Generator + optional discriminators with the contract of :mod:`.base`.

    Train mode returns the generator losses: ``loss_l1_hole`` and, when ``adversarial`` is set
    and discriminators exist, ``loss_gan`` (the generator fooling them). The discriminator's
    own step is :meth:`discriminator_loss` (mmediting alternates them; its schedule trains the
    generator alone first, then the discriminators, then both).

    Args:
        generator: :class:`GLGenerator`.
        discriminators: :class:`GLDiscriminators` or None (L1 only).
        adversarial: add ``loss_gan`` in train mode.
        loss_weights: overrides of :data:`GL_LOSS_WEIGHTS`.
    """

    def __init__(self, generator: GLGenerator, discriminators: GLDiscriminators | None = None,
                 adversarial: bool = True, loss_weights: dict[str, float] | None = None) -> None:
        super().__init__()
        unknown = set(loss_weights or {}) - set(GL_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; known: "
                             f"{sorted(GL_LOSS_WEIGHTS)}")
        self.generator = generator
        self.discriminators = discriminators
        self.adversarial = adversarial
        self.loss_weights = {**GL_LOSS_WEIGHTS, **(loss_weights or {})}

    def complete(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """(raw output, completed image), both [B, 3, H, W] in [0, 1]."""
        check_inpainting_inputs(images, masks, 4)
        x = torch.cat((from_unit(images) * (1 - masks), masks), 1)
        output = to_unit(self.generator(x))
        return output, composite(output, images, masks)

    def forward(self, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
        output, completed = self.complete(images, masks)
        if not self.training:
            return {"output": output, "completed": completed}
        return self.generator_losses(images, masks, output, completed)

    def generator_losses(self, images: Tensor, masks: Tensor, output: Tensor, completed: Tensor,
                         *, adversarial: bool | None = None) -> dict[str, Tensor]:
        """The generator's losses for an ``output`` / ``completed`` pair of :meth:`complete`
        (so a training loop that also steps the discriminators runs the generator once).

        Args:
            adversarial: add ``loss_gan`` (needs discriminators); ``None``: ``self.adversarial``.
        """
        adversarial = self.adversarial if adversarial is None else adversarial
        losses = {"loss_l1_hole": self.loss_weights["hole"] * masked_l1_loss(output, images,
                                                                             masks)}
        if adversarial and self.discriminators is not None:
            logit = self._discriminate(completed, masks)
            losses["loss_gan"] = self.loss_weights["gan"] * F.binary_cross_entropy_with_logits(
                logit, torch.ones_like(logit))
        return losses

    def discriminator_loss(self, images: Tensor, masks: Tensor, completed: Tensor) -> Tensor:
        """BCE of the discriminators on real ``images`` (label 1) and ``completed`` (label 0,
        detached), averaged."""
        if self.discriminators is None:
            raise ValueError("this GlobalLocal model has no discriminators")
        real = self._discriminate(images, masks)
        fake = self._discriminate(completed.detach(), masks)
        return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def _discriminate(self, images: Tensor, masks: Tensor) -> Tensor:
        x = from_unit(images)
        return self.discriminators(x, local_crops(x, masks, self.discriminators.local_size))


def global_local(upsampler: str | None = None, image_size: int = 256, local_size: int = 128,
                 **kwargs) -> GlobalLocal:
    """Global&Local at the paper's size (256 px images, 128 px local crops)."""
    return GlobalLocal(GLGenerator(64, upsampler), GLDiscriminators(image_size, local_size),
                       **kwargs)


def global_local_slim(upsampler: str | None = None, image_size: int = 64, local_size: int = 32,
                      **kwargs) -> GlobalLocal:
    """Smoke-profile Global&Local: base width 16, discriminators of width 16 up to 128."""
    return GlobalLocal(GLGenerator(16, upsampler),
                       GLDiscriminators(image_size, local_size, 16, 128, 256), **kwargs)
