"""danet-deploy: from a trained DANet checkpoint to verified ONNX and TensorRT inference engines."""

__version__ = "0.1.0"
