"""Using a deployed model: the Python segmenter, its inputs (images, folders, globs, videos) and its outputs
(palette label maps, overlays with a legend, streamed video)."""

from danet_deploy.predict.segmenter import Prediction, Segmenter, SegmenterOptions

__all__ = ["Prediction", "Segmenter", "SegmenterOptions"]
