"""napari-clumps: find giant star-forming clumps in galaxy images.

The small user API, importable headless (no napari, no Qt)::

    from napari_clumps import detect, evaluate, get_detector, read_image, train

    table = detect("cutouts/")                      # a folder, files, images or arrays
    scores = evaluate("truth.csv", table)           # completeness, purity, F1, COCO AP
    model = get_detector("my_model.safetensors")    # a packaged name, a file or an architecture

Heavy dependencies (torch, astropy, photutils) are imported only when a function needs them;
docs/architecture.md maps the modules.
"""

__version__ = "0.1.0"

#: Public name -> the module (of this package) that defines it; loaded on first use.
_LAZY = {
    "read_image": "io",
    "find_images": "io",
    "GalaxyImage": "io",
    "ImageReadError": "io",
    "detect": "inference",
    "iter_detections": "inference",
    "get_detector": "model",
    "load_model": "model",
    "save_model": "model",
    "ModelError": "model",
    "train": "training",
    "TrainingOptions": "training",
    "load_labelled_images": "training",
    "evaluate": "metrics",
    "read_detections": "detections",
    "write_detections": "detections",
    "simulate_galaxy": "simulate",
    "write_dataset": "simulate",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
