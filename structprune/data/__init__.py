"""Data for calibration, fine-tuning and accuracy: built-in digits, .npz, image folders, user code.

>>> from structprune.data import load_data
>>> load_data("digits").input_shape
(1, 8, 8)
"""
from structprune.data.batches import calibration_batches
from structprune.data.bundle import DataBundle, DataOptions
from structprune.data.evaluation import accuracy_unmeasurable, evaluate_accuracy, first_training_inputs
from structprune.data.load import DATA_SOURCES, DataSource, load_data

__all__ = ["DATA_SOURCES", "DataBundle", "DataOptions", "DataSource", "accuracy_unmeasurable", "calibration_batches",
           "evaluate_accuracy", "first_training_inputs", "load_data"]
