"""framefarm_export: converts a diffusers FramePack pipeline into a framefarm ONNX bundle."""

__version__ = "0.1.0"
