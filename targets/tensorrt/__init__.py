"""TensorRT target: a bundle (FP32/FP16/INT8 QDQ ONNX, manifest, trtexec README) built on the host, engines on the device.

The host half needs only onnx and onnxruntime. The device half (``edgec engine build``, the TensorRT runner)
imports ``tensorrt`` and ``cuda-python`` lazily, and checks for a CUDA device before creating any TensorRT object.
"""
