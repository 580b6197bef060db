"""ONNX Runtime target: FP32, FP16 and INT8 (U8S8 QDQ) ONNX files, run on the CPU execution provider."""
