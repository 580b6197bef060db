"""mcu target: full-integer TFLite for TFLite Micro (Cortex-M, Ethos-U) with firmware sources, a measured arena and vela."""
