"""Image inpainting (Global&Local, Partial Conv; CARAFE paper), with the contract of
:mod:`glimpse.inpainting.base`: losses in train mode, ``{"output", "completed"}`` in eval."""

from glimpse.inpainting.base import check_inpainting_inputs, composite, from_unit, to_unit
from glimpse.inpainting.global_local import (
    GL_LOSS_WEIGHTS,
    GLDiscriminators,
    GlobalLocal,
    GLGenerator,
    global_local,
    global_local_slim,
    local_crops,
)
from glimpse.inpainting.pconv import (
    PCONV_LOSS_WEIGHTS,
    PConvBlock,
    PConvUNet,
    VGG16Features,
    pconv,
    pconv_slim,
)

__all__ = [
    "GL_LOSS_WEIGHTS",
    "GLDiscriminators",
    "GLGenerator",
    "GlobalLocal",
    "PCONV_LOSS_WEIGHTS",
    "PConvBlock",
    "PConvUNet",
    "VGG16Features",
    "check_inpainting_inputs",
    "composite",
    "from_unit",
    "global_local",
    "global_local_slim",
    "local_crops",
    "pconv",
    "pconv_slim",
    "to_unit",
]
