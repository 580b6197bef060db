"""Calibration and evaluation data: readers that turn files, image folders and callables into checked sets.

Imports only ``edgec.compiler`` and numpy; Pillow and scikit-learn are imported when they are needed.
"""

from edgec.calibration_data.images import IMAGE_SUFFIXES, Preprocess
from edgec.calibration_data.labels import load_labels
from edgec.calibration_data.readers import ROLES, EvaluationSet, load_dataset, select
from edgec.calibration_data.samples import digits_spec, digits_split, write_digits_sets

__all__ = [
    "IMAGE_SUFFIXES",
    "ROLES",
    "EvaluationSet",
    "Preprocess",
    "digits_spec",
    "digits_split",
    "load_dataset",
    "load_labels",
    "select",
    "write_digits_sets",
]
