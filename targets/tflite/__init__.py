"""arm target: TFLite (FP32 / FP16 / full-integer INT8) from the torch model via litert-torch, on LiteRT."""
