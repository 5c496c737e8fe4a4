"""``attnviz.data.sources``: every input kind gives the same images, labels and ids."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from attnviz.data.preprocess import PreprocessError, preprocess_for
from attnviz.data.sources import image_source, iter_batches


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
    assert [data.load(i)[1] for i in range(5)] == [0, 1, 0, 1, 0]
    for got, want in zip(_arrays(data), pils):
        np.testing.assert_array_equal(got, np.asarray(want))

    plain = image_source(pils, labels=[4, 3, 2, 1, 0])  # a list of PIL images, labels given
    assert [plain.load(i)[1] for i in range(5)] == [4, 3, 2, 1, 0]


def test_dataloader_follows_the_sampler_order():
    pils = _pils()
    loader = DataLoader(_Pairs(pils), batch_size=2, sampler=[3, 0, 4])
    source = image_source(loader)
    assert source.ids == ["#3", "#0", "#4"] and source.class_names == ["a", "b"]
    assert [source.load(i)[1] for i in range(3)] == [1, 0, 0]
    for got, j in zip(_arrays(source), [3, 0, 4]):
        np.testing.assert_array_equal(got, np.asarray(pils[j]))


def _to_tensor(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()


def test_bad_file_is_skipped_with_its_reason(tmp_path):
    root = _folder(tmp_path, _pils(3))
    (root / "a" / "zz_empty.png").write_bytes(b"")
    (root / "b" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    source = image_source(root)
    loaded = {source.ids[i]: source.load(i) for i in range(len(source))}
    assert loaded["a/zz_empty.png"][0] is None and loaded["a/zz_empty.png"][2] == "empty file"
    assert loaded["b/zz_broken.png"][2] == "not an image"

    # one batch per 2 positions (a checkpoint can name where it stopped): usable images are
    # stacked, the others listed with their position, id and reason
    assert source.ids == ["a/0.png", "a/2.png", "a/zz_empty.png", "b/1.png", "b/zz_broken.png"]
    batches = list(iter_batches(source, range(len(source)), 2, _to_tensor))
    assert [b.positions for b in batches] == [2, 2, 1]
    assert [len(b) for b in batches] == [2, 1, 0] and batches[0].x.shape[0] == 2
    assert [r.id for b in batches for r in b.records] == ["a/0.png", "a/2.png", "b/1.png"]
    assert [r.index for b in batches for r in b.records] == [0, 1, 3]
    assert [s for b in batches for s in b.skipped] == [
        (2, "a/zz_empty.png", "empty file"),
        (4, "b/zz_broken.png", "not an image"),
    ]
    assert [y for b in batches for y in b.labels] == [0, 0, 1]
    np.testing.assert_array_equal(batches[0].x[1], _to_tensor(source.load(1)[0]))
    assert batches[0].images is None
    limited = list(iter_batches(source, [1], 5, _to_tensor, keep_images=True))
    assert [[r.index for r in b.records] for b in limited] == [[1]]
    np.testing.assert_array_equal(np.asarray(limited[0].images[0]), np.asarray(source.load(1)[0]))

    # DataLoader workers decode the same items, in the same order
    with_workers = list(iter_batches(source, range(len(source)), 2, _to_tensor, workers=2))
    assert [b.records for b in with_workers] == [b.records for b in batches]
    assert [b.skipped for b in with_workers] == [b.skipped for b in batches]
    for a, b in zip(with_workers, batches):
        assert torch.equal(a.x, b.x)
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(source, [0], 0, _to_tensor))
    with pytest.raises(ValueError, match="workers"):
        next(iter_batches(source, [0], 1, _to_tensor, workers=-1))


def test_any_file_name_is_kept_and_excluded_folders_are_not_read(tmp_path):
    root = _folder(tmp_path, _pils(2))
    odd = os.fsdecode(b"a/caf\xe9 \xff.png")  # not UTF-8: surrogate escapes in the name
    _pils(1)[0].save(root / odd)
    source = image_source(root)
    assert "a/caf\\xe9 \\xff.png" in source.ids
    i = source.ids.index("a/caf\\xe9 \\xff.png")
    image, label, reason = source.load(i)
    assert reason is None and label == 0 and image.size == (20, 16)
    str(source.ids[i]).encode("utf-8")  # printable: no surrogates left
    paths = image_source([root / odd])
    assert paths.ids == [str(root / "a") + "/caf\\xe9 \\xff.png"]
    assert paths.load(0)[2] is None

    out = root / "b" / "out"
    out.mkdir()
    _pils(1)[0].save(out / "figure.png")
    assert "b/out/figure.png" in image_source(root).ids
    assert image_source(root, exclude=[out]).ids == ["a/0.png", "a/caf\\xe9 \\xff.png", "b/1.png"]


def test_tensor_items_pass_through_and_errors(tmp_path):
    x = torch.randn(3, 3, 8, 8)
    prepared = image_source(x, labels=[0, 1, 2])  # a (N, 3, H, W) tensor: model inputs
    assert prepared.prepared and list(prepared.ids) == ["#0", "#1", "#2"]

    def identity(item):
        if not isinstance(item, Tensor):
            pytest.fail("PIL path used")
        return item

    (batch,) = iter_batches(prepared, range(3), 4, identity)
    assert torch.equal(batch.x, x) and batch.labels == [0, 1, 2]
    pairs = image_source(list(zip(x, [0, 1, 2])))  # a sequence of (tensor, label) items
    assert not pairs.prepared
    (batch,) = iter_batches(pairs, range(3), 4, identity)
    assert torch.equal(batch.x, x) and batch.labels == [0, 1, 2]

    # missing preprocessing is an error up front, never a skipped image
    with pytest.raises(PreprocessError, match="preprocess="):
        preprocess_for(None)
    (bad,) = iter_batches(image_source(_pils(1)), [0], 1, lambda img: 1 / 0)
    assert bad.records == [] and "preprocessing failed: ZeroDivisionError" in bad.skipped[0][2]
    with pytest.raises(ValueError, match="labels has 1 entries for 2 images"):
        image_source(_pils(2), labels=[0])
    with pytest.raises(TypeError, match="images must be"):
        image_source(42)
    with pytest.raises(ValueError, match="no image files"):
        image_source(tmp_path)
