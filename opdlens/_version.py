"""The package version, in a module of its own so any part of opdlens can read it without
importing the package's public facade (which imports most of opdlens)."""

__version__ = "0.1.0"
