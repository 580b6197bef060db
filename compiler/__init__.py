"""The core of edgec: IR types, errors, stages, the pipeline and the build cache.

Imports nothing from the other layers (targets, calibration data, benchmarks, the driver).
"""
