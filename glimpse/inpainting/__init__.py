"""Image inpainting (Global&Local, Partial Conv; CARAFE paper).

Empty until the inpainting models land; present so the import-linter layers are written down."""

__all__: list[str] = []
