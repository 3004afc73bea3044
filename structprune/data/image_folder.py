"""A folder of images sorted into one sub-folder per class (FOLDER/CLASS/IMAGE), read lazily."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from structprune.data.bundle import DataBundle, DataOptions, make_bundle, split_indices
from structprune.errors import UsageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
_PIL_MODES = {1: "L", 3: "RGB"}  # model input channels -> PIL mode


class ImageFiles(Dataset):
    """(image, label) pairs: each file opened on access, converted, resized and scaled to [0, 1]."""

    def __init__(self, files: list[Path], labels: np.ndarray, input_shape: tuple[int, int, int]) -> None:
        self.files, self.labels, self.input_shape = files, labels, input_shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        channels, height, width = self.input_shape
        pixels = read_image(self.files[index], _PIL_MODES[channels], (width, height))
        image = torch.from_numpy(pixels).reshape(height, width, channels).permute(2, 0, 1)
        return image.contiguous(), torch.tensor(self.labels[index])


def load_image_folder_bundle(spec: str, options: DataOptions) -> DataBundle:
    """Classes are the sorted sub-folder names; images are png/jpg/jpeg/bmp.

    Without an input shape, images become RGB at the first image's size.
    """
    folder = Path(spec)
    classes = _class_folders(folder)
    files, labels = _image_files(classes)
    input_shape = _image_shape(options.input_shape, files[0], folder)
    dataset = ImageFiles(files, labels, input_shape)
    split = split_indices(len(files), labels, options)
    return make_bundle(folder.resolve().name, dataset, split, len(classes), input_shape, options)


def read_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """Pixels of one image file in `mode`, resized to `size` (width, height), as float32 in [0, 1]."""
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # PIL reports damaged files with any of these (a broken PNG chunk is a SyntaxError)
        raise UsageError(f"cannot read image {path} ({type(exc).__name__}); remove or replace it") from exc
    if size is not None and converted.size != size:
        converted = converted.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(converted, dtype=np.float32) / 255.0


def _class_folders(folder: Path) -> list[Path]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(
            f"image folder {folder} has no class sub-folders; lay it out as {folder}/CLASS/IMAGE.png"
        )
    return classes


def _image_files(classes: list[Path]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for label, class_folder in enumerate(classes):
        images = sorted(p for p in class_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UsageError(
                f"class folder {class_folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder"
            )
        files += images
        labels += [label] * len(images)
    return files, np.asarray(labels, dtype=np.int64)


def _image_shape(requested: tuple[int, ...] | None, first_image: Path, folder: Path) -> tuple[int, int, int]:
    if requested is None:
        height, width = read_image(first_image, "L", None).shape
        return (3, height, width)
    if len(requested) != 3 or requested[0] not in _PIL_MODES:
        raise UsageError(
            f"image folder {folder} needs --input-shape 1,C,H,W with C = 1 or 3, got {requested} per sample"
        )
    return tuple(requested)
