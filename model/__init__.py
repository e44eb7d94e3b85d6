"""The interest model: training (torch) and serving (onnxruntime) of the sequence encoder.

Torch-free, imported by stream workers: ``features`` (events -> tensors),
``runtime`` (ONNX inference), ``registry`` / ``checks`` (versions and their
verification), ``data`` / ``evaluate`` (event loading, evaluation protocol)
and ``cli`` (commands import torch only when run).

Needs the ``train`` extra (torch, transformers, onnx): ``encoder``,
``objective``, ``trainer``, ``export`` and ``publish``.
"""
