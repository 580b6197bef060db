"""The stages of ``edgec build`` that every target shares: load, export, calibrate."""
