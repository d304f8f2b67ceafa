"""aromni: run, stream, train and evaluate AR-Omni from the command line or Python.

The library lives in ``aromni.core``; the CLI in ``aromni.app`` and ``aromni.commands``.
"""
__version__ = "0.1.0"
