"""Test support code: the TensorRT stand-in, fake system files, upstream reference models, the GPU-CI gate."""
