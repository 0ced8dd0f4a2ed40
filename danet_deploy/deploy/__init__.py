"""Packages for the runtimes a model is deployed on: a Triton model repository, a DeepStream nvinfer config."""
