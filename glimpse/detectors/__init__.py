"""Detectors and their builder functions: two-stage R-CNNs, cascades and RetinaNet."""
