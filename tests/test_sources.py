"""``attnviz.data.sources``: every input kind gives the same images, labels and ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from attnviz.data.sources import PreprocessConfigError, image_source, iter_batches


def _pils(n: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)) for _ in range(n)]


class _Pairs(Dataset):
    classes = ["a", "b"]

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 2


def _folder(tmp_path, images):
    root = tmp_path / "imgs"
    for i, img in enumerate(images):
        (root / ["a", "b"][i % 2]).mkdir(parents=True, exist_ok=True)
        img.save(root / ["a", "b"][i % 2] / f"{i}.png")
    return root


def _arrays(source):
    return [np.asarray(source.load(i)[0]) for i in range(len(source))]


def test_folder_paths_dataset_and_loader_agree(tmp_path):
    pils = _pils()
    root = _folder(tmp_path, pils)
    folder = image_source(root)
    # folder order: class a (0, 2, 4), then class b (1, 3)
    order = [0, 2, 4, 1, 3]
    assert folder.ids == [f"{'ab'[i % 2]}/{i}.png" for i in order]
    assert folder.labels == [0, 0, 0, 1, 1] and folder.class_names == ["a", "b"]
    assert image_source(root, id_style="path").ids == [str(root / i) for i in folder.ids]
    expected = [np.asarray(pils[i]) for i in order]
    for got, want in zip(_arrays(folder), expected):
        np.testing.assert_array_equal(got, want)

    paths = [root / i for i in folder.ids]
    from_paths = image_source(paths, labels=[0, 0, 0, 1, 1])
    assert from_paths.ids == [str(p) for p in paths] and from_paths.labels == [0, 0, 0, 1, 1]
    for got, want in zip(_arrays(from_paths), expected):
        np.testing.assert_array_equal(got, want)

    data = image_source(_Pairs(pils))
    assert list(data.ids) == [f"#{i}" for i in range(5)] and data.class_names == ["a", "b"]
    assert list(image_source(_Pairs(pils), id_style="path").ids) == [str(i) for i in range(5)]
    assert [data.load(i)[1] for i in range(5)] == [0, 1, 0, 1, 0]
    for got, want in zip(_arrays(data), pils):
        np.testing.assert_array_equal(got, np.asarray(want))

    plain = image_source(pils, labels=[4, 3, 2, 1, 0])  # a list of PIL images, labels given
    assert [plain.load(i)[1] for i in range(5)] == [4, 3, 2, 1, 0]


def test_dataloader_follows_the_sampler_order():
    pils = _pils()
    loader = DataLoader(_Pairs(pils), batch_size=2, sampler=[3, 0, 4])
    source = image_source(loader)
    assert source.ids == ["#3", "#0", "#4"] and source.batch_size == 2
    assert [source.load(i)[1] for i in range(3)] == [1, 0, 0]
    for got, j in zip(_arrays(source), [3, 0, 4]):
        np.testing.assert_array_equal(got, np.asarray(pils[j]))
    assert list(image_source(loader, id_style="path").ids) == ["0", "1", "2"]


def test_bad_file_is_skipped_with_its_reason(tmp_path):
    root = _folder(tmp_path, _pils(3))
    (root / "a" / "zz_empty.png").write_bytes(b"")
    (root / "b" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    source = image_source(root)
    loaded = {source.ids[i]: source.load(i) for i in range(len(source))}
    assert loaded["a/zz_empty.png"][0] is None and loaded["a/zz_empty.png"][2] == "empty file"
    assert loaded["b/zz_broken.png"][2] == "not an image"

    def to_tensor(img):
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()

    batches = list(iter_batches(source, 2, to_tensor))
    assert [b.x.shape[0] for b in batches] == [2, 1]
    assert [source.ids[i] for b in batches for i in b.indices] == ["a/0.png", "a/2.png", "b/1.png"]
    assert [s for b in batches for s in b.skipped] == [
        ("a/zz_empty.png", "empty file"),
        ("b/zz_broken.png", "not an image"),
    ]
    assert [y for b in batches for y in b.labels] == [0, 0, 1]
    np.testing.assert_array_equal(batches[0].x[1], to_tensor(source.load(1)[0]))
    limited = list(iter_batches(source, 5, to_tensor, start=1, limit=1))
    assert [b.indices for b in limited] == [[1]]


def test_tensor_items_pass_through_and_errors():
    x = torch.randn(3, 3, 8, 8)
    source = image_source(list(zip(x, [0, 1, 2])))
    (batch,) = iter_batches(source, 4, lambda img: pytest.fail("PIL path used"))
    assert torch.equal(batch.x, x) and batch.labels == [0, 1, 2]

    def no_config(img):
        raise PreprocessConfigError("need preprocess=")

    with pytest.raises(PreprocessConfigError):
        list(iter_batches(image_source(_pils(1)), 1, no_config))
    (bad,) = iter_batches(image_source(_pils(1)), 1, lambda img: 1 / 0)
    assert bad.indices == [] and "preprocessing failed: ZeroDivisionError" in bad.skipped[0][1]
    with pytest.raises(ValueError, match="labels has 1 entries for 2 images"):
        image_source(_pils(2), labels=[0])
    with pytest.raises(TypeError, match="images must be"):
        image_source(42)
