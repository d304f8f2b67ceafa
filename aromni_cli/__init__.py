"""aromni: run, stream, train and evaluate AR-Omni from the command line or Python.

The library lives in ``aromni.core``; the CLI in ``aromni.app`` and ``aromni.commands``.
``aromni.load(path)`` loads a model and its tokenizers (see ``aromni.core.api.load``).
"""
__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str):
    # lazy: `import aromni` (the CLI entry) must not import torch
    if name == "load":
        from aromni.core.api import load
        return load
    raise AttributeError(f"module 'aromni' has no attribute {name!r}")
