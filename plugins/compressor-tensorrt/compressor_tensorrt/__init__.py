"""compressor-tensorrt: the `tensorrt` target of compressor, a separately installed plugin.

The target registers through the `compressor.targets` entry point (module
`compressor_tensorrt.target`); nothing here imports TensorRT until an engine is built or loaded.
"""
__version__ = "0.1.0"
