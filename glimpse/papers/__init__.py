"""One module per paper (profiles, experiments, table and figure functions) and ``reproduce``."""
