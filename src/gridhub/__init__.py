"""gridhub: an LV-CAP compatible substation runtime and a hub for low-voltage network data."""

__version__ = "0.1.0"
