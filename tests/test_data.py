"""ddpm.core.data: paper scaling, splits, per-device batches, flips, CIFAR-10 and image folders from fake files.

Nothing here downloads: CIFAR-10 and the image folders are tiny fakes written into tmp_path.
"""

from __future__ import annotations

import inspect
import io
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from PIL import Image

from ddpm.core.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    EpochSampler,
    ImageDataModule,
    ImageDecodeError,
    ImageFolderDataModule,
    uint8_to_model,
)

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
DATA_OPTIONS = sorted(p.stem for p in CONF_DATA.glob("*.yaml") if "_target_" in OmegaConf.load(p))  # datasets


# ----------------------------------------------------------------------------------------------- helpers
def write_fake_cifar(root: Path, n_per_batch: int = 4, n_test: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The torchvision layout: root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(5 * n_per_batch, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    for i in range(5):
        rows = train[i * n_per_batch : (i + 1) * n_per_batch]
        entry = {"batch_label": f"training batch {i + 1} of 5", "data": rows, "labels": [0] * n_per_batch}
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": test, "labels": [1] * n_test}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f)
    return train.reshape(-1, 3, 32, 32), test.reshape(-1, 3, 32, 32)


def save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def rgb(w: int, h: int, seed: int) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def write_mixed_folder(root: Path) -> None:
    """Nested dirs, mixed extensions (upper case too), grayscale/RGBA/palette/wrong sizes, non-image files."""
    save(rgb(16, 16, 0), root / "a.png")
    save(rgb(40, 20, 1), root / "sub" / "b.JPG")
    save(rgb(16, 16, 2).convert("L"), root / "sub" / "deeper" / "c.jpeg")
    rgba = rgb(20, 40, 3).convert("RGBA")
    rgba.putalpha(128)
    save(rgba, root / "sub" / "deeper" / "d.PNG")
    save(rgb(16, 16, 4).convert("P"), root / "e.bmp")
    save(rgb(30, 30, 5), root / "other" / "f.webp")
    save(rgb(8, 8, 6), root / "g.jpg")  # smaller than the resolution: upscaled
    (root / "notes.txt").write_text("not an image")
    save(rgb(16, 16, 7), root / ".hidden" / "h.png")  # hidden folders are skipped


def from_yaml(name: str, **settings) -> ImageDataModule:
    """The data module of the Hydra option ``conf/data/<name>.yaml`` (its ``_target_`` with its settings)."""
    cfg = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    cfg.pop("defaults", None)
    return instantiate(OmegaConf.merge(cfg, settings))


# ----------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    return dm


def test_digits_shape_name_and_paper_scaling(digits: DigitsDataModule) -> None:
    assert digits.image_shape == (1, 8, 8) and digits.name == "digits"
    assert DigitsDataModule().image_shape == (1, 8, 8)  # available before setup
    batch = next(iter(digits.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (32, 1, 8, 8) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    k = (batch + 1) * 127.5  # x = k/127.5 - 1 for an integer k: no dequantisation noise
    assert torch.allclose(k, k.round(), atol=1e-4)
    # 0..16 -> round(v*255/16): only 17 distinct levels, the extremes included
    levels = torch.cat(list(digits.iter_uint8("train"))).unique()
    assert len(levels) <= 17 and levels.min() == 0 and levels.max() == 255
    assert torch.equal(uint8_to_model(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


def test_digits_splits_disjoint_and_deterministic(digits: DigitsDataModule) -> None:
    sizes = [digits.num_images(s) for s in ("train", "val", "test")]
    assert sizes == [1437, 179, 181]  # ddpm.core.data.digits.digits_split_indices, shared with the classifier
    imgs = {s: digits.splits()[s].images.flatten(1) for s in ("train", "val", "test")}  # type: ignore[union-attr]
    # the same images again for the same seed, different ones for another seed
    again = DigitsDataModule(seed=0).splits()["val"].images  # type: ignore[union-attr]
    assert torch.equal(again.flatten(1), imgs["val"])
    other = DigitsDataModule(seed=1).splits()["val"].images  # type: ignore[union-attr]
    assert not torch.equal(other.flatten(1), imgs["val"])
    # disjoint by index: rebuild the index split the same way the module does
    from ddpm.core.data.digits import digits_split_indices

    sets = [set(i.tolist()) for i in digits_split_indices(1797, 0)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


@pytest.mark.parametrize("val, test", [(1.5, 0.1), (0.6, 0.6), (-0.1, 0.1)])
def test_digits_held_out_fractions_that_leave_no_training_set_name_both_keys(val, test) -> None:
    from ddpm.core.data.digits import digits_split_indices

    with pytest.raises(ValueError, match=rf"^data\.val_fraction={val}, data\.test_fraction={test} is not valid: "
                                         r"expected two fractions in \[0, 1\) that sum to less than 1"):
        digits_split_indices(1797, 0, val, test)


def test_digits_upscale() -> None:
    dm = DigitsDataModule(upscale=2)
    assert dm.image_shape == (1, 16, 16) and dm.name == "digits_16"
    x = next(dm.iter_uint8("test", max_items=3))
    assert x.shape == (3, 1, 16, 16) and torch.equal(x[:, :, ::2, ::2], x[:, :, 1::2, 1::2])


# ----------------------------------------------------------------------------------------------- batches
def test_global_batch_split_per_device() -> None:
    dm = DigitsDataModule(batch_size=128)
    assert dm.per_device_batch_size == 128
    dm.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    dm.setup("fit")
    assert dm.per_device_batch_size == 64 and dm.train_dataloader().batch_size == 64
    assert dm.val_dataloader().batch_size == 64
    dm3 = DigitsDataModule(batch_size=128)
    dm3.trainer = SimpleNamespace(world_size=3)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="128") as err:
        dm3.setup("fit")
    msg = str(err.value)
    assert "3" in msg and "[1, 2, 4, 8, 16, 32, 64, 128]" in msg and "126" in msg


def test_train_loader_shuffles_drops_last_eval_does_not(digits: DigitsDataModule) -> None:
    train, val = digits.train_dataloader(), digits.val_dataloader()
    assert train.drop_last and len(train) == 1437 // 32
    assert not val.drop_last and len(val) == -(-180 // 32)
    first = torch.cat(list(val))
    assert torch.equal(first, torch.cat(list(digits.val_dataloader())))  # fixed order
    assert torch.equal(first, uint8_to_model(digits.splits()["val"].images))  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------- flips
def _train_items(dm: DigitsDataModule) -> list:
    """The keys the training sampler hands to the dataset in one epoch."""
    return list(dm.train_dataloader().sampler)


def test_flip_only_on_train_and_only_when_enabled() -> None:
    on = DigitsDataModule(batch_size=16, random_flip=True)
    on.setup("fit")
    src = on.splits()["train"].images  # type: ignore[union-attr]
    assert torch.equal(on.train_dataset[(5, True)], torch.flip(uint8_to_model(src[5]), dims=[-1]))
    assert torch.equal(on.train_dataset[(5, False)], uint8_to_model(src[5]))
    assert torch.equal(on.train_dataset[5], uint8_to_model(src[5]))
    # flips on: every training item carries a coin, about half heads (p = 0.5), the batches show both
    items = _train_items(on)
    coins = [flip for _, flip in items]
    assert len(items) == 1437 and 0.45 < sum(coins) / len(coins) < 0.55
    batch = next(iter(on.train_dataloader()))
    keys = list(on.train_dataloader().sampler)[:16]
    assert torch.equal(batch, torch.stack([on.train_dataset[k] for k in keys]))
    # the eval loaders never flip: they read the images in order, as they are
    assert torch.equal(torch.cat(list(on.val_dataloader())), uint8_to_model(on.splits()["val"].images))  # type: ignore[union-attr]
    off = DigitsDataModule(batch_size=16)  # digits default: no flips
    off.setup("fit")
    assert all(isinstance(k, int) for k in _train_items(off))
    on.flip_p = 1.0
    assert all(flip for _, flip in _train_items(on))


# ----------------------------------------------------------------------------------------------- epochs / resume
def test_epoch_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    data = list(range(50))
    a, b = EpochSampler(data, seed=3, flip_p=0.5), EpochSampler(data, seed=3, flip_p=0.5)
    assert list(a) == list(b) and list(a) == list(a)  # same seed and epoch: same order and coins, every time
    assert sorted(i for i, _ in a) == data  # a permutation
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(i for i, _ in a) == data
    assert list(EpochSampler(data, seed=4, flip_p=0.5)) != first
    # the coin belongs to (epoch, image), not to a position: the same image keeps its coin in a resumed iteration
    a.set_epoch(0)
    a.start = 20
    assert list(a) == first[20:]


def test_epoch_sampler_shards_across_ranks_without_repeats() -> None:
    data = list(range(23))
    shards = [list(EpochSampler(data, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [7, 7, 7]  # 23 // 3 each, no padding with repeats
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == 21 and set(flat) <= set(data)
    whole = list(EpochSampler(data, seed=1))
    assert shards[1] == whole[:21][1::3]  # rank r takes every R-th item of the common permutation


def test_ddp_ranks_get_disjoint_equal_shares_of_the_same_epoch() -> None:
    """Under DDP each rank builds its own loader; the sampler is a DistributedSampler, so Lightning keeps it."""
    from torch.utils.data import DistributedSampler

    loaders = []
    for rank in range(2):
        dm = DigitsDataModule(batch_size=64, random_flip=True)
        dm.shuffle_seed = 5
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # type: ignore[assignment]
        dm.setup("fit")
        loaders.append(dm.train_dataloader())
    samplers = [ld.sampler for ld in loaders]
    assert all(isinstance(s, DistributedSampler) for s in samplers)
    assert [(s.rank, s.num_replicas) for s in samplers] == [(0, 2), (1, 2)]
    assert [ld.batch_size for ld in loaders] == [32, 32] and len(loaders[0]) == (1437 // 2) // 32
    shares = [[i for i, _ in s] for s in samplers]
    assert len(shares[0]) == len(shares[1]) == 1437 // 2 and not set(shares[0]) & set(shares[1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumable_loader_continues_mid_epoch_with_the_same_batches(num_workers: int) -> None:
    dm = DigitsDataModule(batch_size=64, random_flip=True, num_workers=num_workers)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    straight = list(loader)
    assert len(straight) == len(loader) == 1437 // 64
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 5}
    fresh = dm.train_dataloader()  # a new process: a new loader, restored, then Lightning sets the epoch
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)
    rest = list(fresh)
    assert len(rest) == len(straight) - 5
    assert all(torch.equal(x, y) for x, y in zip(rest, straight[5:]))
    assert fresh.state_dict() == {"epoch": 2, "batches": len(straight)}
    assert len(list(fresh)) == len(straight)  # the skip is used once: the next iteration is whole
    # a checkpoint written at the end of epoch 2 resumes with epoch 3, whole
    end = dm.train_dataloader()
    end.load_state_dict({"epoch": 2, "batches": len(straight)})
    end.sampler.set_epoch(3)
    loader.sampler.set_epoch(3)
    assert all(torch.equal(x, y) for x, y in zip(list(end), list(loader), strict=True))


# ----------------------------------------------------------------------------------------------- CIFAR-10
def test_cifar10_from_fake_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = write_fake_cifar(tmp_path)
    import torchvision.datasets

    def no_download(*args, **kwargs):
        raise AssertionError("CIFAR10 must not be constructed (no download) unless data.download=true")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=4)
    assert dm.image_shape == (3, 32, 32) and dm.name == "cifar10" and dm.random_flip
    dm.prepare_data()
    dm.setup("fit")
    assert [dm.num_images(s) for s in ("train", "val", "test")] == [20, 6, 6]
    got = torch.cat(list(dm.iter_uint8("train", batch_size=7)))
    assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(train))
    assert torch.equal(torch.cat(list(dm.iter_uint8("test", max_items=5))), torch.from_numpy(test[:5]))
    batch = next(iter(dm.test_dataloader()))
    assert batch.shape == (4, 3, 32, 32) and torch.equal(batch, uint8_to_model(torch.from_numpy(test[:4])))
    # root may also be the cifar-10-batches-py folder itself; val_size takes a seeded subset of test
    dm2 = CIFAR10DataModule(root=str(tmp_path / "cifar-10-batches-py"), batch_size=4, val_size=3)
    assert dm2.num_images("val") == 3 and dm2.num_images("test") == 6


def test_cifar10_missing_says_how_to_get_it(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"), batch_size=4)
    dm.prepare_data()  # download=False: does nothing
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    assert isinstance(err.value, DatasetNotFoundError)
    assert "data.download=true" in str(err.value) and "cifar-10-batches-py" in str(err.value)


class _RunsCode:
    """Unpickling this calls os.system: what a tampered download could hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_cifar10_batches_are_unpickled_without_running_code(tmp_path: Path) -> None:
    """The CIFAR-10 batches are somebody else's pickles: only arrays, lists and strings may come out of them."""
    from ddpm.core.data.cifar10 import DataOnlyUnpickler, UnsafePickleError, read_cifar_batches

    train, _ = write_fake_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [_RunsCode(str(marker))]}, f, protocol=2)
    with pytest.raises(UnsafePickleError) as err:
        read_cifar_batches(tmp_path, ("data_batch_1", "data_batch_2", "data_batch_3"))
    assert not marker.exists()
    assert "posix.system" in str(err.value) and "data_batch_3" in str(err.value)
    assert "data.download=true" in str(err.value)
    with pytest.raises(UnsafePickleError):  # the same for builtins, e.g. eval
        DataOnlyUnpickler(io.BytesIO(b"cbuiltins\neval\n(S'1'\ntR.")).load()
    # The real release (pickled with numpy 1.x, Python 2) names numpy.core.multiarray and uses byte keys:
    blob = pickle.dumps({b"data": train[:4].reshape(4, -1), b"labels": [0, 1, 2, 3]}, protocol=2)
    assert b"numpy._core.multiarray" in blob
    for module in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        entry = DataOnlyUnpickler(io.BytesIO(blob.replace(b"numpy._core.multiarray", module))).load()
        assert np.array_equal(entry[b"data"], train[:4].reshape(4, -1)) and entry[b"labels"] == [0, 1, 2, 3]


def test_cifar10_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    import torchvision.datasets
    import torchvision.datasets.utils

    def fake_download(url, root, filename=None, md5=None, **_):
        calls.append((url, root, filename, md5))
        write_fake_cifar(Path(root))

    def unpickles(*a, **k):  # torchvision's dataset class unpickles without limits: never used
        raise AssertionError("torchvision.datasets.CIFAR10 must not be constructed")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(
        torchvision.datasets,
        "CIFAR10",
        type(
            "CIFAR10",
            (),
            dict(
                url="URL",
                filename="cifar-10-python.tar.gz",
                tgz_md5="c58f30108f718f92721af3b95e74349a",
                __init__=unpickles,
            ),
        ),
    )
    CIFAR10DataModule(root=str(tmp_path)).prepare_data()
    assert calls == []
    dm = CIFAR10DataModule(root=str(tmp_path), download=True, batch_size=4)
    dm.prepare_data()
    assert calls == [("URL", str(tmp_path), "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    dm.prepare_data()  # already there: no second download
    assert len(calls) == 1
    dm.setup("fit")
    assert dm.num_images("train") == 20

    def html_instead_of_archive(url, root, filename=None, md5=None, **_):
        raise RuntimeError("File not found or corrupted.")  # torchvision's md5 check on a proxy's HTML page

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", html_instead_of_archive)
    from ddpm.core.io import DownloadError

    with pytest.raises(DownloadError) as err:
        CIFAR10DataModule(root=str(tmp_path / "elsewhere"), download=True).prepare_data()
    assert "cifar-10-python.tar.gz" in str(err.value) and "data.root=" in str(err.value)


# ----------------------------------------------------------------------------------------------- folders
def test_image_folder_too_small_for_its_held_out_splits_names_the_fractions(tmp_path: Path) -> None:
    root = tmp_path / "two"
    root.mkdir()
    for i in range(2):
        Image.new("RGB", (12, 12), (i * 90, 0, 0)).save(root / f"{i}.png")
    dm = ImageFolderDataModule(root=str(root), resolution=12, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(ValueError, match=r"^only 2 images: nothing is left for training after the held-out splits "
                                         r"\(data\.test_fraction=0\.1, data\.val_fraction=0\.1, at least one image "
                                         r"each\); add images, or set the fractions to 0"):
        dm.setup("fit")
    trains = ImageFolderDataModule(root=str(root), resolution=12, batch_size=2, val_fraction=0.0, test_fraction=0.0)
    trains.setup("fit")  # the fix it names
    assert trains.num_images("train") == 2


def test_image_folder_mixed_files(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path / "imgs")
    dm = ImageFolderDataModule(root=str(tmp_path / "imgs"), resolution=12, batch_size=2, val_fraction=0.2)
    assert dm.image_shape == (3, 12, 12) and dm.name == "image_folder_12"
    dm.setup("fit")
    sizes = [dm.num_images(s) for s in ("train", "val", "test")]
    assert sum(sizes) == 7 and sizes[1] == 1 and sizes[2] == 1  # .txt and .hidden/ ignored
    all_imgs = torch.cat([torch.cat(list(dm.iter_uint8(s, batch_size=3))) for s in ("train", "val", "test")])
    assert all_imgs.shape == (7, 3, 12, 12) and all_imgs.dtype == torch.uint8
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 12, 12) and batch.dtype == torch.float32
    # grayscale -> 3 equal channels; exact-size image unchanged (RGBA on white: the test below, per pixel)
    from ddpm.core.data.folder import load_image

    gray = load_image(tmp_path / "imgs" / "sub" / "deeper" / "c.jpeg", 12)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    same = load_image(tmp_path / "imgs" / "a.png", 16)
    assert torch.equal(same, torch.from_numpy(np.array(rgb(16, 16, 0))).permute(2, 0, 1))
    # deterministic split for a seed
    dm_again = ImageFolderDataModule(root=str(tmp_path / "imgs"), resolution=12, val_fraction=0.2)
    assert dm_again.splits()["val"].files == dm.splits()["val"].files  # type: ignore[union-attr]


def check_resize_short_side_then_center_crop(tmp_path: Path) -> None:
    """40x20 -> resolution 10: the short side is resized 2x down (to 20x10), then the center 10 columns are kept.
    Linear ramps make it a closed form: bicubic resampling reproduces a linear function, so resized pixel j (center
    at source coordinate 2 j + 0.5) holds the ramp's value there; crop column i is resized column i + 5. (A crop
    without the resize gives 6 (i + 15) in blue and 12 (i + 5) in red, an off-center crop other offsets.)"""
    from ddpm.core.data.folder import load_image

    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    arr[..., 2] = 6 * np.arange(40)[None, :]  # blue: 6 x column
    arr[..., 0] = 12 * np.arange(20)[:, None]  # red: 12 x row
    x = load_image(save(Image.fromarray(arr), tmp_path / "wide.png"), 10).double()
    assert x.shape == (3, 10, 10)
    i = torch.arange(1, 9, dtype=torch.float64)  # away from the image border (bicubic's edge handling)
    torch.testing.assert_close(x[2, 5, 1:9], 6 * (2 * (i + 5) + 0.5), atol=1.5, rtol=0)  # 12 i + 63
    torch.testing.assert_close(x[0, 1:9, 5], 12 * (2 * i + 0.5), atol=1.5, rtol=0)  # every row kept: 24 i + 6


def check_composites_transparency_on_white(tmp_path: Path) -> None:
    """RGBA pixels come out as alpha c + (1 - alpha) 255 (alpha in [0, 1]), rounded: checked per pixel on an
    image of the exact size (no resize), from fully transparent (white) to opaque (the colour)."""
    from ddpm.core.data.folder import load_image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(12, 12, 4), dtype=np.uint8)
    arr[..., 3] = np.array([0, 64, 128, 255])[rng.integers(0, 4, size=(12, 12))]
    x = load_image(save(Image.fromarray(arr, "RGBA"), tmp_path / "t.png"), 12).permute(1, 2, 0).double()
    a = arr[..., 3:].astype(np.float64) / 255
    expected = torch.from_numpy(a * arr[..., :3] + (1 - a) * 255)
    torch.testing.assert_close(x, expected, atol=1.0, rtol=0)
    assert (x[torch.from_numpy(arr[..., 3] == 0)] == 255).all()


def test_image_folder_resize_short_side_then_center_crop(tmp_path: Path) -> None:
    check_resize_short_side_then_center_crop(tmp_path)


def test_image_folder_composites_transparency_on_white(tmp_path: Path) -> None:
    check_composites_transparency_on_white(tmp_path)


def _crop_without_resize(img, resolution):
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def _resize_then_crop_top_left(img, resolution):
    w, h = img.size
    s = resolution / min(w, h)
    return img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC).crop((0, 0, resolution, resolution))


IMAGE_MUTATIONS = {
    "crop_without_resize": ("resize_center_crop", _crop_without_resize, check_resize_short_side_then_center_crop),
    "crop_top_left": ("resize_center_crop", _resize_then_crop_top_left, check_resize_short_side_then_center_crop),
    "alpha_dropped": ("to_rgb", lambda img: img.convert("RGB"), check_composites_transparency_on_white),
    "composited_on_black": ("to_rgb", lambda img: Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)),
                                                                        img.convert("RGBA")).convert("RGB"),
                            check_composites_transparency_on_white),
}


@pytest.mark.parametrize("mutation", sorted(IMAGE_MUTATIONS))
def test_image_checks_catch_mutations(tmp_path: Path, monkeypatch, mutation: str) -> None:
    """The two checks above fail for a crop without the resize, a corner crop, a dropped alpha channel and
    compositing on black."""
    from ddpm.core.data import folder

    name, fn, check = IMAGE_MUTATIONS[mutation]
    monkeypatch.setattr(folder, name, fn)
    with pytest.raises(AssertionError):
        check(tmp_path)


def test_image_folder_train_test_subfolders(tmp_path: Path) -> None:
    for i in range(3):
        save(rgb(8, 8, i), tmp_path / "train" / f"{i}.png")
    save(rgb(8, 8, 9), tmp_path / "test" / "t.png")
    dm = ImageFolderDataModule(root=str(tmp_path), resolution=8, batch_size=1)
    assert [dm.num_images(s) for s in ("train", "val", "test")] == [3, 1, 1]


def test_undecodable_file_is_named(tmp_path: Path) -> None:
    save(rgb(8, 8, 0), tmp_path / "ok.png")
    save(rgb(8, 8, 1), tmp_path / "ok2.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (tmp_path / "quota.png").write_text("<!DOCTYPE html><html><body>Google Drive quota exceeded</body></html>")
    dm = ImageFolderDataModule(root=str(tmp_path), resolution=8, val_fraction=0, test_fraction=0)
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        list(dm.iter_uint8("train"))
    from ddpm.core.data.folder import load_image

    with pytest.raises(ImageDecodeError, match="quota.png") as err:
        load_image(tmp_path / "quota.png", 8)
    assert "HTML" in str(err.value)


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetNotFoundError, match="no image files") as err:
        ImageFolderDataModule(root=str(tmp_path / "empty"), resolution=8).setup("fit")
    assert str((tmp_path / "empty").resolve()) in str(err.value) and ".png" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        from_yaml("lsun_church256", root=str(tmp_path / "missing")).setup("fit")
    assert "fyu/lsun" in str(err.value) and "church_outdoor" in str(err.value)


def test_paper_dataset_defaults(tmp_path: Path) -> None:
    church, bedroom, cat = (
        from_yaml(n, root=str(tmp_path)) for n in ("lsun_church256", "lsun_bedroom256", "lsun_cat256")
    )
    assert church.name == "lsun_church256" and church.image_shape == (3, 256, 256)
    assert (bedroom.name, cat.name) == ("lsun_bedroom256", "lsun_cat256")
    assert (church.random_flip, bedroom.random_flip, cat.random_flip) == (True, False, False)
    assert church.batch_size == bedroom.batch_size == cat.batch_size == 64
    celebahq = from_yaml("celebahq256", root=str(tmp_path))
    assert celebahq.name == "celebahq256" and celebahq.random_flip and "CelebA-HQ" in celebahq.how_to_get
    assert from_yaml("lsun_cat256", root=str(tmp_path), resolution=64).name == "lsun_cat64"  # name follows
    assert CIFAR10DataModule().batch_size == 128 and CIFAR10DataModule().random_flip
    assert not DigitsDataModule().random_flip


# ----------------------------------------------------------------------------------------------- yaml
@pytest.mark.parametrize("name", DATA_OPTIONS)
def test_yaml_matches_class(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DDPM_DATA", raising=False)
    cfg = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    cls = get_class(cfg._target_)
    assert cfg._target_ == f"ddpm.core.data.{cls.__name__}"
    keys = {k for k in cfg if k not in ("_target_", "defaults")}
    params: set[str] = set()
    for c in cls.__mro__:  # the class's own arguments, then its base's where it forwards **loader
        if "__init__" in vars(c):
            sig = inspect.signature(c.__init__).parameters
            params |= {k for k, p in sig.items() if k != "self" and p.kind != p.VAR_KEYWORD}
            if all(p.kind != p.VAR_KEYWORD for p in sig.values()):
                break
    assert keys <= params, keys - params
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("root") not in (None, "???"):
        assert resolved["root"].startswith("./data/")
    if name in ("digits", "cifar10", "image_folder"):  # the class used directly behaves as its own option
        dm = cls(**{"root": "x"} if "root" in keys else {})
        # digits' YAML carries the quickstart's batch (256, written once there); the class keeps the generic 128
        keys_same = ("random_flip",) if name == "digits" else ("batch_size", "random_flip")
        assert all(resolved[k] == getattr(dm, k) for k in keys_same)


def test_failed_cifar10_download_says_how_and_leaves_no_empty_folder(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.utils

    from ddpm.core.io import DownloadError

    def offline(url, root, filename=None, md5=None, **_):
        (Path(root) / filename).write_bytes(b"<html>partial")  # what a failed transfer may leave
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    root = tmp_path / "data" / "cifar10"
    with pytest.raises(DownloadError, match=r"copy cifar-10-python.tar.gz .*data.root="):
        CIFAR10DataModule(root=str(root), download=True).prepare_data()
    assert not (tmp_path / "data").exists()  # the folders the attempt created are gone again


def test_a_file_that_is_no_image_stops_the_run_before_training(tmp_path: Path, tiny) -> None:
    from ddpm.commands.training import train

    root = tmp_path / "imgs"
    for i in range(6):
        save(rgb(8, 8, i), root / f"ok{i}.png")
    (root / "sub").mkdir()
    (root / "sub" / "quota.jpg").write_text("<!DOCTYPE html><html>quota exceeded</html>")
    cfg = tiny("data=image_folder", f"data.root={root}", "data.resolution=8", "data.num_workers=0",
               "data.val_fraction=0.2", "data.test_fraction=0.2", batch=2, output_dir=tmp_path / "run")
    with pytest.raises(ImageDecodeError, match=r"1 of 7 files .*quota.jpg.*HTML.*data.verify=false"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "csv").exists()


def test_more_workers_than_cpus_are_capped(monkeypatch) -> None:
    import os

    from ddpm.core.data.base import usable_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert usable_workers(4) == 2 and usable_workers(1) == 1 and usable_workers(0) == 0
