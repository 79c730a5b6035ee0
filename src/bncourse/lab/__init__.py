"""The course's laboratory: what the chapters measure with.

Devices and seeds (``device``), data sets made by code or bundled (``data``), the networks
(``models``, ``convnets``, ``residual``), the trainer, figures (``plot``, ``diagram``), test helpers
(``testing``), the benchmark (``bench``, ``hardware``) and one module per chapter topic. It builds on
the library (the package root) and never on the teaching tools.
"""
