"""executorch target: ExecuTorch programs (.pte, XNNPACK; FP32 / FP16 / INT8) from the torch model, on ExecuTorch."""
