"""Image folders (`root/<class>/<image>`) as streaming datasets: layout, transforms, refusals, and training on one."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nncompress.core import UserError
from nncompress.data import ImageFolderDataset, StreamingDataset, load_dataset, make_loaders
from nncompress.data import image_folder
from nncompress.data.image_folder import LazyImages, scan_image_folder
from nncompress.training import TrainConfig, evaluate, train

CLASSES = ("zebra", "apple", "mango")  # not created in sorted order: indices must still follow sorted names


def _make_folder(root, per_class=6):
    """3 classes × `per_class` images of differing sizes, JPEG and PNG mixed, plus a hidden file and a .txt."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            w, h = 40 + 7 * i, 30 + 5 * ((i + c) % 4)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            arr[..., c] = 255  # a class-dependent colour, so a model has something to learn
            img = Image.fromarray(arr)
            if i % 2:
                img.save(d / f"img{i}.png")
            else:
                img.save(d / f"img{i}.JPG" if i == 0 else d / f"img{i}.jpeg" if i == 2 else d / f"img{i}.jpg", quality=90)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "apple" / ".hidden.jpg")
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()  # a hidden folder is not a class
    return root


def test_classes_follow_sorted_names_and_skip_hidden_and_non_images(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    classes, samples = scan_image_folder(root)
    assert classes == ["apple", "mango", "zebra"]
    assert len(samples) == 18
    assert all(p.parent.name == classes[c] for p, c in samples)
    assert not any(p.name.startswith(".") or p.suffix == ".txt" for p, _ in samples)
    assert [p.name for p, c in samples if c == 0] == sorted(p.name for p, c in samples if c == 0)


def test_eval_transform_shape_normalisation_and_determinism(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    ds = ImageFolderDataset(root, size=32, resize=40, train=False)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 0
    assert torch.equal(ds[0][0], x)
    raw = x * ds.std + ds.mean  # undo the normalisation: pixels back in [0, 1]
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    big = ImageFolderDataset(root, train=False)
    assert big[5][0].shape == (3, 224, 224)
    gray = ImageFolderDataset(root, size=16, resize=20, train=False, grayscale=True)
    assert gray[3][0].shape == (1, 16, 16)


def test_train_transform_is_seeded_by_seed_and_epoch(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    a = ImageFolderDataset(root, size=24, resize=28, train=True, seed=3)
    b = ImageFolderDataset(root, size=24, resize=28, train=True, seed=3)
    c = ImageFolderDataset(root, size=24, resize=28, train=True, seed=4)
    assert a[(7, 0)][0].shape == (3, 24, 24)
    assert torch.equal(a[(7, 0)][0], b[(7, 0)][0]) and torch.equal(a[(7, 2)][0], b[(7, 2)][0])
    assert torch.equal(a[7][0], a[(7, 0)][0])
    differs_by_epoch = any(not torch.equal(a[(i, 0)][0], a[(i, 1)][0]) for i in range(6))
    differs_by_seed = any(not torch.equal(a[(i, 0)][0], c[(i, 0)][0]) for i in range(6))
    assert differs_by_epoch and differs_by_seed


def test_corrupt_image_is_one_line_user_error_naming_the_file(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    bad = root / "mango" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    ds = ImageFolderDataset(root, size=16, resize=20, train=False)
    index = [p for p, _ in ds.samples].index(bad)
    with pytest.raises(UserError) as e:
        ds[index]
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    root = _make_folder(tmp_path / "imgs")
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: sample 0 (40×35) is in the warning range,
    # sample 17 (75×45) in the error range; both must be refused
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ds = ImageFolderDataset(root, size=16, resize=20, train=False)
    for i in (0, 17):
        with pytest.raises(UserError, match="decompression bomb") as e:
            ds[i]
        assert str(ds.samples[i][0]) in str(e.value) and "\n" not in str(e.value)


def test_empty_and_imageless_folders_are_refused_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no images found under .*empty: expected .*empty/<class>/<image>\.jpg") as e:
        ImageFolderDataset(empty)
    assert "\n" not in str(e.value)
    texts = tmp_path / "texts"
    for name in ("a", "b"):
        (texts / name).mkdir(parents=True)
        (texts / name / "readme.txt").write_text("x")
    (texts / "top.txt").write_text("x")
    with pytest.raises(UserError, match="no images found under"):
        ImageFolderDataset(texts)
    with pytest.raises(UserError, match="no images found under"):
        load_dataset(str(texts))
    root = _make_folder(tmp_path / "imgs")
    (root / "pear").mkdir()
    with pytest.raises(UserError, match="class folder 'pear' holds no"):
        ImageFolderDataset(root)
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / "a.png")
    with pytest.raises(UserError, match="at least 2 classes"):
        ImageFolderDataset(tmp_path / "one")


def test_load_dataset_on_a_folder_streams_and_make_loaders_batches(tmp_path, monkeypatch):
    root = _make_folder(tmp_path / "imgs")
    ds = load_dataset(str(root), seed=0)
    assert isinstance(ds, StreamingDataset)
    assert ds.num_classes == 3 and ds.input_shape == (3, 224, 224)
    assert len(ds.y_train) == 15 and len(ds.y_test) == 3 and sorted(ds.y_test.tolist()) == [0, 1, 2]  # stratified
    train_files = {p for p, _ in ds.train.samples}
    assert not train_files & {p for p, _ in ds.test.samples}
    again = load_dataset(str(root), seed=0)
    assert [p for p, _ in again.test.samples] == [p for p, _ in ds.test.samples]
    assert ds.x_test[:2].shape == (2, 3, 224, 224) and len(ds.x_train) == 15
    assert isinstance(ds.x_train, LazyImages)
    with pytest.raises(UserError, match="stream from disk"):
        torch.utils.data.TensorDataset(ds.x_train, ds.y_train)
    assert np.asarray(ds.x_test, np.float32).shape == (3, 3, 224, 224)
    monkeypatch.setattr(image_folder, "MAX_MATERIALIZE", 2)
    with pytest.raises(UserError, match="asks for 3 images at once"):
        np.asarray(ds.x_test)
    monkeypatch.undo()
    small = ds.subset(6, 2)
    assert len(small.y_train) == 6 and len(small.y_test) == 2
    train_loader, test_loader = make_loaders(small, batch_size=4, seed=0)
    batches = list(train_loader)
    assert [len(y) for _, y in batches] == [4, 2] and batches[0][0].shape == (4, 3, 224, 224)
    assert sum(len(y) for _, y in test_loader) == 2


def test_a_tiny_model_trains_on_an_image_folder(tmp_path):
    from nncompress.data.image_folder import load_image_folder

    root = _make_folder(tmp_path / "imgs")
    ds = load_image_folder(root, size=16, resize=20, seed=0)
    train_loader, test_loader = make_loaders(ds, batch_size=8, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, ds.num_classes))
    before = [p.detach().clone() for p in model.parameters()]
    history = train(model, train_loader, TrainConfig(epochs=2, lr=0.05, device="cpu", progress=False), val_loader=test_loader)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 0.0 <= evaluate(model, test_loader) <= 100.0


def test_cli_accepts_an_image_folder_as_data(tmp_path, run_cli):
    """`--data FOLDER` reaches load_dataset (the CLI's check lets folders through); an empty one is one error line."""
    import json

    root = tmp_path / "imgs"
    _make_folder(root)
    code, out, err = run_cli(["analyze", "--model", "lenet300", "--data", str(root), "--json"])
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["totals"]["params"] > 0
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["analyze", "--model", "lenet300", "--data", str(tmp_path / "empty")])
    assert code == 2 and err.strip().startswith("error: no images found under"), err
