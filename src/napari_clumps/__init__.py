"""napari-clumps: find giant star-forming clumps in galaxy images.

The core library (no napari, no Qt) is importable headless; heavy dependencies (torch,
astropy, napari) are imported only when a function needs them.
"""
__version__ = "0.1.0"

_LAZY = {
    "read_image": "io",
    "GalaxyImage": "io",
    "ImageReadError": "io",
    "simulate_galaxy": "simulate",
    "write_dataset": "simulate",
    "read_detections": "detections",
    "write_detections": "detections",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
