"""Semantic segmentors (UperNet, PSPNet; CARAFE paper): images in, one
:class:`~glimpse.structures.Segmentation` per image out.

Empty until the segmentors land; present so the import-linter layers are written down."""

__all__: list[str] = []
