"""Backends: one sub-package per target runtime, the Target/Runner interface, the registry and device profiles."""
