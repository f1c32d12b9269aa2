"""Fitting: per-spectrum MAP fit (``map``), and the cube driver (``cube``)."""
