"""Benchmarks that time glimpse against a baseline in the same run and write the ratios under
``results/bench/`` (machines are noisy; only same-run ratios count): :mod:`.carafe`,
:mod:`.detectors`, :mod:`.masked_conv`, :mod:`.ga`, :mod:`.deform_conv` (:mod:`.timing` holds
their shared timing helpers). Run them with ``python -m glimpse bench NAME``
(:mod:`glimpse.cli`)."""

__all__: list[str] = []
