"""structprune.data: digits, .npz, image folders and user functions give seeded, shaped loaders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from structprune.data import evaluate_accuracy, first_training_inputs, load_data
from structprune.errors import UsageError

DIGITS_COUNT = 1797

LOADER_MODULE = '''
import torch
from torch.utils.data import DataLoader, TensorDataset

def _loader(n):
    return DataLoader(TensorDataset(torch.randn(n, 4), torch.arange(n) % 2), batch_size=5)

def train_only():
    return _loader(12)

def train_and_val():
    return _loader(12), _loader(6)

def not_a_loader():
    return [1, 2, 3]

def broken():
    raise RuntimeError("no data today")
'''


def _all(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _usage_error(match: str, spec: str, **kwargs: object) -> str:
    with pytest.raises(UsageError, match=match) as caught:
        load_data(spec, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


class Oracle(torch.nn.Module):
    """Predicts the label hidden in the first feature: a perfect classifier for tagged data."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0].long(), self.num_classes).float() * self.scale


# --- digits -----------------------------------------------------------------------------------

@pytest.mark.parametrize("input_shape", [(64,), (1, 8, 8), (3, 32, 32), None])
def test_digits_fits_the_input_shape(input_shape: tuple[int, ...] | None) -> None:
    bundle = load_data("digits", input_shape=input_shape, batch_size=16)
    expected = input_shape or (1, 8, 8)
    x, y = next(iter(bundle.train))
    assert x.shape == (16, *expected) and x.dtype == torch.float32
    assert bundle.input_shape == expected and bundle.num_classes == 10 and bundle.name == "digits"
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9


def test_digits_rgb_channels_are_copies_of_the_grey_image() -> None:
    x, _ = next(iter(load_data("digits", input_shape=(3, 32, 32)).val))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_digits_split_is_stratified_and_normalised() -> None:
    bundle = load_data("digits", input_shape=(64,), val_fraction=0.2)
    train_x, train_y = _all(bundle.train)
    _, val_y = _all(bundle.val)
    assert len(train_y) + len(val_y) == DIGITS_COUNT
    assert len(val_y) == round(DIGITS_COUNT * 0.2)
    assert set(train_y.tolist()) == set(val_y.tolist()) == set(range(10))
    val_counts, train_counts = (torch.bincount(y, minlength=10).float() for y in (val_y, train_y))
    val_share = val_counts / (val_counts + train_counts)
    assert torch.all((val_share - 0.2).abs() < 0.01)
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1.0) < 1e-2


def test_same_seed_gives_same_split_and_order() -> None:
    first, again = (load_data("digits", input_shape=(64,), seed=3) for _ in range(2))
    other = load_data("digits", input_shape=(64,), seed=4)
    for a, b in zip(_all(first.train), _all(again.train)):
        assert torch.equal(a, b)
    assert torch.equal(_all(first.val)[0], _all(again.val)[0])
    assert not torch.equal(_all(first.val)[0], _all(other.val)[0])


def test_val_fraction_zero_gives_no_val() -> None:
    bundle = load_data("digits", val_fraction=0.0)
    assert bundle.val is None and len(bundle.train.dataset) == DIGITS_COUNT


# --- npz --------------------------------------------------------------------------------------

def test_npz_round_trip_keeps_every_sample(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((40, 1, 6, 6)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    bundle = load_data(str(tmp_path / "mine.npz"), input_shape=(1, 6, 6), batch_size=8)
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("mine", 4, (1, 6, 6))
    xs, ys = (torch.cat(parts) for parts in zip(_all(bundle.train), _all(bundle.val)))
    order = torch.argsort(xs.flatten(1)[:, 0])
    expected = torch.argsort(torch.from_numpy(x).flatten(1)[:, 0])
    assert torch.equal(xs[order], torch.from_numpy(x)[expected])
    assert torch.equal(ys[order], torch.from_numpy(y)[expected])


def test_npz_images_are_resized_and_unlabelled_data_has_no_val(tmp_path: Path) -> None:
    np.savez(tmp_path / "calib.npz", x=np.ones((10, 5, 5), dtype=np.float64))
    bundle = load_data(str(tmp_path / "calib.npz"), input_shape=(3, 8, 8), batch_size=4)
    (batch,) = next(iter(bundle.train))
    assert batch.shape == (4, 3, 8, 8) and torch.allclose(batch, torch.ones(()))
    assert bundle.val is None and bundle.num_classes is None


def test_npz_flat_samples_keep_their_shape(tmp_path: Path) -> None:
    np.savez(tmp_path / "vec.npz", x=np.zeros((20, 7)), y=np.arange(20) % 2)
    assert load_data(str(tmp_path / "vec.npz")).input_shape == (7,)


@pytest.mark.parametrize("arrays, kwargs, match", [
    (None, {}, "does not exist"),
    ({"features": np.zeros((3, 4))}, {}, "no array 'x'"),
    ({"x": np.zeros(5)}, {}, "x has shape"),
    ({"x": np.zeros((4, 3)), "y": np.zeros(3)}, {}, "one class label per sample"),
    ({"x": np.zeros((4, 3)), "y": np.array([0, 1, -1, 2])}, {}, "class indices"),
    ({"x": np.zeros((4, 10))}, {"input_shape": (3, 2, 2)}, "do not fill the input shape"),
    ({"x": np.zeros((4, 2, 5, 5))}, {"input_shape": (3, 5, 5)}, "channels"),
])
def test_bad_npz_is_refused(tmp_path: Path, arrays: dict | None, kwargs: dict, match: str) -> None:
    path = tmp_path / "bad.npz"
    if arrays is not None:
        np.savez(path, **arrays)
    assert "bad.npz" in _usage_error(match, str(path), **kwargs)


def test_corrupt_npz_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    _usage_error("not a readable .npz", str(tmp_path / "junk.npz"))


# --- image folders ----------------------------------------------------------------------------

def _image_folder(root: Path, per_class: int = 6) -> Path:
    for label, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 10), colour).save(folder / f"img_{i}.png")
    return root


def test_image_folder_gives_labelled_rgb_tensors(tmp_path: Path) -> None:
    bundle = load_data(str(_image_folder(tmp_path / "shapes")), input_shape=(3, 8, 8), batch_size=4,
                       val_fraction=0.25)
    xs, ys = (torch.cat(parts) for parts in zip(_all(bundle.train), _all(bundle.val)))
    assert (bundle.name, bundle.num_classes, len(bundle.val.dataset)) == ("shapes", 2, 3)
    assert xs.shape == (12, 3, 8, 8) and 0.0 <= float(xs.min()) and float(xs.max()) <= 1.0
    red = xs[ys == 0]
    assert torch.allclose(red[:, 0], torch.ones(())) and torch.allclose(red[:, 2], torch.zeros(()))
    assert sorted(ys.tolist()) == [0] * 6 + [1] * 6


def test_image_folder_grey_and_default_shape(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    grey, _ = next(iter(load_data(str(root), input_shape=(1, 5, 5)).train))
    assert grey.shape[1:] == (1, 5, 5)
    assert load_data(str(root)).input_shape == (3, 10, 12)


def test_bad_image_folders_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _usage_error("no class sub-folders", str(empty))
    (empty / "cats").mkdir()
    _usage_error("has no images", str(empty))
    root = _image_folder(tmp_path / "ok")
    _usage_error("C = 1 or 3", str(root), input_shape=(64,))
    (root / "class_0" / "img_0.png").write_bytes(b"broken")
    bundle = load_data(str(root), input_shape=(3, 4, 4), val_fraction=0.0)
    with pytest.raises(UsageError, match="cannot read image .*img_0.png"):
        _all(bundle.train)


# --- module:function --------------------------------------------------------------------------

@pytest.fixture()
def loader_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_loaders.py").write_text(LOADER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_loaders"


def test_function_spec_returning_a_loader(loader_module: str) -> None:
    bundle = load_data(f"{loader_module}:train_only")
    assert (bundle.name, bundle.val, bundle.num_classes) == ("train_only", None, None)
    assert bundle.input_shape == (4,)
    assert len(bundle.train.dataset) == 12


def test_function_spec_returning_train_and_val(loader_module: str) -> None:
    bundle = load_data(f"{loader_module}:train_and_val", input_shape=(4,))
    assert len(bundle.train.dataset) == 12 and len(bundle.val.dataset) == 6


@pytest.mark.parametrize("function, match", [
    ("not_a_loader", "returned list; it must return a DataLoader"),
    ("broken", "failed .*no data today"),
    ("missing", "has no function 'missing'"),
])
def test_bad_function_specs_are_refused(loader_module: str, function: str, match: str) -> None:
    _usage_error(match, f"{loader_module}:{function}")


def test_unimportable_module_is_refused() -> None:
    _usage_error("cannot import module 'no_such_data_module'", "no_such_data_module:load")


# --- bad specs and options --------------------------------------------------------------------

@pytest.mark.parametrize("spec, kwargs, match", [
    ("cifar10", {}, "not understood .*digits.*npz.*FOLDER.*module:function"),
    ("some/where/images", {}, "no file or folder"),
    ("digits", {"batch_size": 0}, "batch size"),
    ("digits", {"val_fraction": 1.0}, "val fraction"),
    ("digits", {"input_shape": (0, 8)}, "input_shape"),
    ("digits", {"input_shape": (65,)}, "64 values"),
    ("digits", {"input_shape": (8, 8)}, "does not fit digits"),
])
def test_bad_specs_are_refused(spec: str, kwargs: dict, match: str) -> None:
    _usage_error(match, spec, **kwargs)


# --- accuracy and calibration -----------------------------------------------------------------

def test_perfect_model_scores_100_and_training_flag_is_restored() -> None:
    labels = torch.arange(30) % 3
    tagged = torch.cat([labels[:, None].float(), torch.randn(30, 2)], dim=1)
    model = Oracle(3).train()
    assert evaluate_accuracy(model, DataLoader(TensorDataset(tagged, labels), batch_size=7)) == 100.0
    assert model.training


def test_exported_graph_module_can_be_evaluated() -> None:
    labels = torch.arange(12) % 4
    tagged = torch.cat([labels[:, None].float(), torch.randn(12, 3)], dim=1)
    exported = torch.export.export(Oracle(4).eval(), (tagged[:2],), strict=False).module()
    assert evaluate_accuracy(exported, DataLoader(TensorDataset(tagged, labels), batch_size=2)) == 100.0


def test_constant_model_scores_its_class_share() -> None:
    bundle = load_data("digits", input_shape=(64,))
    _, val_y = _all(bundle.val)
    always_zero = Oracle(10).eval()
    zeros = torch.zeros(len(val_y), 64)
    expected = 100.0 * float((val_y == 0).float().mean())
    assert evaluate_accuracy(always_zero, DataLoader(TensorDataset(zeros, val_y), batch_size=50)) == \
        pytest.approx(expected)
    assert not always_zero.training


def test_accuracy_refuses_unlabelled_batches() -> None:
    with pytest.raises(UsageError, match="labelled"):
        evaluate_accuracy(Oracle(2), DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2))


def test_first_training_inputs_are_the_first_samples_deterministically() -> None:
    bundle = load_data("digits", batch_size=64)
    batches = first_training_inputs(bundle, 100)
    assert [len(b) for b in batches] == [64, 36]
    again = first_training_inputs(bundle, 100)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    first_samples = torch.stack([bundle.train.dataset[i][0] for i in range(100)])
    assert torch.equal(torch.cat(batches), first_samples)
    assert sum(len(b) for b in first_training_inputs(bundle, 10_000)) == len(bundle.train.dataset)
    with pytest.raises(UsageError):
        first_training_inputs(bundle, 0)


@pytest.mark.parametrize("key", ["labels", "label", "y"])
def test_dict_batches_give_their_labels_under_any_accepted_key(key: str) -> None:
    from structprune.data.batches import split_batch

    inputs, labels = split_batch({"input_ids": torch.ones(2, 3), key: torch.tensor([1, 0])})
    assert list(inputs) == ["input_ids"] and labels.tolist() == [1, 0]


def test_recovery_refuses_batches_without_labels_and_says_what_it_needs() -> None:
    from structprune.data.batches import labelled_batch

    assert labelled_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1].tolist() == [0, 1]
    with pytest.raises(TypeError, match=r"recovery needs loaders that yield \(inputs, targets\) pairs .* got a Tensor"):
        labelled_batch(torch.zeros(2, 3))
