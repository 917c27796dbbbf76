"""Tests for leanrobust.data: real file formats written tiny by the tests, Pool, augmentation, sampler."""
import gzip
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from leanrobust.data import (DataError, DataNotFoundError, MixingSampler, Pool, augment_batch, dataset_info,
                             load_dataset, load_npz, split_validation, to_float)
from leanrobust.data import npz, sources

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Keep every test away from the user's cache, $LEANROBUST_DATA, the system dir and the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LEANROBUST_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "system")

    def no_network(*a, **k):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)


# ----------------------------------------------------------------------------- IDX
def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx_split(d: Path, split="train", n=6, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    d.mkdir(parents=True, exist_ok=True)
    pre = "train" if split == "train" else "t10k"
    for stem, arr in ((f"{pre}-images-idx3-ubyte", imgs), (f"{pre}-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (d / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / stem).write_bytes(data)
    return imgs, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    imgs, labels = write_idx_split(tmp_path / "fm", "test", gz=gz)
    x, y = load_dataset("fashion_mnist", "test", root=tmp_path / "fm", download=False)
    assert x.dtype == torch.uint8 and x.shape == (6, 1, 28, 28) and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), imgs) and np.array_equal(y.numpy(), labels)
    assert np.array_equal(sources.read_idx(tmp_path / "fm" / ("t10k-labels-idx1-ubyte" + ".gz" * gz)), labels)
    arr = np.arange(12, dtype=np.int32).reshape(3, 4) - 5  # multi-byte big-endian dtype
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr))
    assert np.array_equal(sources.read_idx(tmp_path / "a.idx"), arr)


def test_idx_truncated_and_bad(tmp_path):
    write_idx_split(tmp_path, "train")
    img = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(img.read_bytes())
    img.write_bytes(gzip.compress(data[:-100]))  # valid gzip, too few pixels
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_dataset("fashion_mnist", "train", root=tmp_path, download=False)
    raw = gzip.compress(data)
    img.write_bytes(raw[: len(raw) // 2])  # cut gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", "train", root=tmp_path, download=False)
    img.write_bytes(gzip.compress(b"\x01\x02" + data[2:]))
    with pytest.raises(DataError, match="magic"):
        load_dataset("fashion_mnist", "train", root=tmp_path, download=False)


def test_label_out_of_range_idx(tmp_path):
    write_idx_split(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(6, 10, np.uint8))))
    with pytest.raises(DataError, match="label 10 out of range") as e:
        load_dataset("mnist", "train", root=tmp_path, download=False)
    assert str(e.value).startswith(str(tmp_path / "train-labels-idx1-ubyte.gz"))  # names the file at fault


def test_search_order_and_not_found(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion_mnist", "train", download=False)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "LEANROBUST_DATA" in msg
    assert str(tmp_path / "system" / "fashion-mnist") in msg and str(tmp_path / "xdg") in msg
    with pytest.raises(DataNotFoundError, match="download failed.*network disabled"):
        load_dataset("mnist", "test", download=True)
    monkeypatch.setenv("LEANROBUST_DATA", str(tmp_path / "env"))
    write_idx_split(tmp_path / "env" / "mnist", "test", seed=1)
    imgs_sys, _ = write_idx_split(tmp_path / "system" / "mnist", "test", seed=2)
    x, _ = load_dataset("mnist", "test", download=False)
    assert not np.array_equal(x[:, 0].numpy(), imgs_sys)  # env dir is searched before the system dir
    imgs_root, _ = write_idx_split(tmp_path / "r", "test", seed=3)
    x, _ = load_dataset("mnist", "test", root=tmp_path / "r", download=False)
    assert np.array_equal(x[:, 0].numpy(), imgs_root)


def test_download_checksum_and_atomic_write(tmp_path, monkeypatch):
    src = tmp_path / "srv"
    imgs, labels = write_idx_split(src, "test")
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: io.BytesIO((src / url.rsplit("/", 1)[1]).read_bytes()))
    with pytest.raises(DataNotFoundError, match="checksum mismatch"):
        load_dataset("mnist", "test")
    cache = sources.cache_dir("mnist")
    assert not any(cache.glob("*.gz")) and not any(cache.glob("*.part"))
    import hashlib
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()}
    monkeypatch.setitem(sources._MD5, "mnist", md5)
    x, y = load_dataset("mnist", "test")
    assert np.array_equal(x[:, 0].numpy(), imgs) and (cache / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.mark.skipif(not (FMNIST_SYSTEM / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", FMNIST_SYSTEM.parent)
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = load_dataset("fashion_mnist", split, download=False)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
        assert y.dtype == torch.int64 and torch.equal(torch.bincount(y), torch.full((10,), n // 10))


def test_dataset_info():
    assert dataset_info("fashion-mnist").mean == (0.2860,) and dataset_info("mnist").crop_pad == 2
    info = dataset_info("cifar100")
    assert (info.num_classes, info.channels, info.size, info.flip, info.crop_pad) == (100, 3, 32, True, 4)
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_info("imagenet")


# ----------------------------------------------------------------------------- CIFAR
def cifar_batches(name, rng):
    """{member: (images, labels)} with a few samples per batch, in the real file layout."""
    if name == "cifar10":
        members, k, nc = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10
    else:
        members, k, nc = ["train", "test"], b"fine_labels", 100
    out = {}
    for m in members:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, nc, 3).tolist()
        d = {b"batch_label": b"x", b"data": data, k: labels, b"filenames": [b"a.png"] * 3}
        if name == "cifar100":
            d[b"coarse_labels"] = [0, 1, 2]
        out[m] = (pickle.dumps(d, protocol=4), data, labels)
    return out


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("packed", [True, False])
def test_cifar(tmp_path, name, packed):
    tar_name, folder = sources._CIFAR[name][:2]
    batches = cifar_batches(name, np.random.default_rng(0))
    if packed:
        with tarfile.open(tmp_path / tar_name, "w:gz") as tar:
            for m, (blob, _, _) in batches.items():
                info = tarfile.TarInfo(f"{folder}/{m}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (tmp_path / folder).mkdir()
        for m, (blob, _, _) in batches.items():
            (tmp_path / folder / m).write_bytes(blob)
    x, y = load_dataset(name, "train", root=tmp_path, download=False)
    train = [v for m, v in batches.items() if m not in ("test", "test_batch")]
    assert x.shape == (3 * len(train), 3, 32, 32) and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), np.concatenate([d for _, d, _ in train]).reshape(-1, 3, 32, 32))
    assert y.tolist() == sum((lab for _, _, lab in train), [])
    xt, yt = load_dataset(name, "test", root=tmp_path, download=False)
    _, test_data, test_labels = batches["test_batch" if name == "cifar10" else "test"]
    assert np.array_equal(xt.numpy(), test_data.reshape(-1, 3, 32, 32)) and yt.tolist() == test_labels


def test_cifar_batches_pair_images_and_labels_per_file(tmp_path):
    """Counts that balance only over the whole set (2+1 images, 1+2 labels) would shift labels silently."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (n_img, labels) in enumerate([(3, [1, 2, 3])] * 5 + [(3, [4, 5, 6])]):
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        (folder / name).write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (n_img, 3072), dtype=np.uint8),
                                                  b"labels": labels}, protocol=4))
    assert load_dataset("cifar10", "train", root=tmp_path, download=False)[1].tolist() == [1, 2, 3] * 5
    bad = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(bad, protocol=4))
    (folder / "data_batch_2").write_bytes(pickle.dumps({**bad, b"data": bad[b"data"][:1], b"labels": [1, 2]}, protocol=4))
    with pytest.raises(DataError, match=r"data_batch_1: 2 images but 1 labels"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    (folder / "data_batch_1").write_bytes(pickle.dumps({**bad, b"labels": [1, 10]}, protocol=4))
    with pytest.raises(DataError, match=r"data_batch_1: label 10 out of range"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    (folder / "data_batch_1").write_bytes(pickle.dumps({**bad, b"data": bad[b"data"][:0], b"labels": []}, protocol=4))
    with pytest.raises(DataError, match=r"data_batch_2: 1 images but 2 labels"):  # an empty batch is fine
        load_dataset("cifar10", "train", root=tmp_path, download=False)


def test_cifar_tarball_missing_a_member(tmp_path):
    blob = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=4)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert str(e.value) == f"{tmp_path / 'cifar-10-python.tar.gz'}: tarball has no member cifar-10-batches-py/data_batch_1"


def py2_cifar_pickle(data: np.ndarray, labels) -> bytes:
    """Bytes laid out as Python 2's cPickle wrote the real CIFAR batches (BINSTRING, numpy.core globals)."""
    s = lambda b: b"U" + bytes([len(b)]) + b
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R(K\x01K"
           + bytes([len(data)]) + b"M\x00\x0c\x86cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
           + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb")
    labs = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + labs + b"u."


@pytest.mark.parametrize("style", ["py2", "protocol2"])
def test_cifar_pickle_styles(tmp_path, style):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    blob = py2_cifar_pickle(data, [3, 7]) if style == "py2" else pickle.dumps({b"data": data, b"labels": [3, 7]}, protocol=2)
    (folder / "test_batch").write_bytes(blob)
    x, y = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert np.array_equal(x.numpy().reshape(2, -1), data) and y.tolist() == [3, 7]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    ok = cifar_batches("cifar10", np.random.default_rng(0))
    for m, (blob, _, _) in ok.items():
        (folder / m).write_bytes(blob)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="data_batch_3.*not allowed"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert not marker.exists()
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)


# ----------------------------------------------------------------------------- npz
def test_npz_good(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", image=img, label=np.arange(5))
    x, y = load_npz(tmp_path / "rgb.npz", num_classes=10)
    assert x.shape == (5, 3, 8, 8) and torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(img))
    assert y.dtype == torch.int64 and y.tolist() == list(range(5))
    np.savez_compressed(tmp_path / "gray.npz", image=img[..., 0], label=np.arange(5, dtype=np.uint8))
    x, _ = load_npz(tmp_path / "gray.npz", limit=3)
    assert x.shape == (3, 1, 8, 8)


def test_npz_memmap_path(tmp_path, monkeypatch):
    monkeypatch.setattr(npz, "MMAP_BYTES", 0)
    img = np.random.default_rng(1).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "big.npz", image=img, label=np.arange(7) % 3)
    arrays = npz._read_npz(tmp_path / "big.npz")
    assert isinstance(arrays["image"], np.memmap)
    x, y = load_npz(tmp_path / "big.npz", 3)
    assert torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(img)) and y.tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("case, match", [
    ("keys", r"expected keys 'image' and 'label', found \['images', 'label'\]"),
    ("range", "label 10 out of range"),
    ("negative", "negative label"),
    ("float_labels", "labels must be integers"),
    ("nan", "non-finite"),
    ("float01", r"\(x \* 255\)\.round\(\)"),
    ("mismatch", "5 images but 4 labels"),
    ("ndim", "must be NxHxWxC"),
    ("truncated", "corrupt or truncated"),
    ("npy", "not an .npz"),
])
def test_npz_errors(tmp_path, case, match):
    p = tmp_path / f"bad_{case}.npz"
    img, lab = np.zeros((5, 4, 4, 3), np.uint8), np.arange(5)
    arrays = {
        "keys": dict(images=img, label=lab), "range": dict(image=img, label=lab + 6),
        "negative": dict(image=img, label=lab - 1), "float_labels": dict(image=img, label=lab * 1.0),
        "nan": dict(image=np.full((5, 4, 4), np.nan), label=lab), "float01": dict(image=img / 255.0, label=lab),
        "mismatch": dict(image=img, label=lab[:4]), "ndim": dict(image=img[:, 0, 0], label=lab),
    }.get(case, dict(image=img, label=lab))
    np.savez(p, **arrays)
    if case == "truncated":
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    if case == "npy":
        with open(p, "wb") as f:
            np.save(f, img)
    with pytest.raises(DataError, match=match) as e:
        load_npz(p, num_classes=10)
    assert p.name in str(e.value)


# ----------------------------------------------------------------------------- Pool
def make_pool(n_per_class=(30, 20, 10), n_gen=7, size=4):
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(n_per_class)] + [torch.zeros(n_gen, dtype=torch.long)])
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    origin = torch.cat([torch.zeros(n - n_gen), torch.ones(n_gen)]).to(torch.uint8)
    return Pool(images, labels, origin, len(n_per_class))


def test_pool_validation_and_ops():
    p = make_pool()
    assert len(p) == 67 and p.is_generated.sum() == 7 and p.is_generated.dtype == torch.bool
    with pytest.raises(ValueError, match="int64"):
        Pool(p.images, p.labels.int(), p.origin, 3)
    with pytest.raises(ValueError, match="uint8"):
        Pool(p.images.float(), p.labels, p.origin, 3)
    with pytest.raises(ValueError, match="out of range"):
        Pool(p.images, p.labels, p.origin, 2)
    with pytest.raises(ValueError, match="66 labels"):
        Pool(p.images, p.labels[:-1], p.origin, 3)
    s = p.subset(torch.tensor([5, 1]))
    assert s.labels.tolist() == [0, 0] and s.images[:, 0, 0, 0].tolist() == [5, 1]
    assert len(p.subset(p.is_generated)) == 7 and len(p.to("cpu")) == 67
    c = s.concat(p.subset([66]))
    assert c.origin.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="cannot join"):
        s.concat(Pool.from_tensors(torch.zeros(1, 1, 5, 5, dtype=torch.uint8), [0], 3))


def test_split_validation():
    p = make_pool()
    tr, va = split_validation(p, 12, seed=3)
    assert len(tr) + len(va) == len(p) and len(va) == 12 and not va.is_generated.any()
    assert torch.bincount(va.labels, minlength=3).tolist() == [6, 4, 2]  # proportional to 30/20/10
    ids_tr, ids_va = set(tr.images[:, 0, 0, 0].tolist()), set(va.images[:, 0, 0, 0].tolist())
    assert not ids_tr & ids_va and tr.is_generated.sum() == 7
    tr2, va2 = split_validation(p, 12, seed=3)
    assert torch.equal(va.images, va2.images) and torch.equal(tr.images, tr2.images)
    _, va3 = split_validation(p, 12, seed=4)
    assert not torch.equal(va.images, va3.images)
    _, va0 = split_validation(p, 0, seed=0)
    assert len(va0) == 0 and va0.images.shape[1:] == p.images.shape[1:]
    assert len(split_validation(p, 7, 0)[1]) == 7
    with pytest.raises(ValueError, match="real samples"):
        split_validation(p, 60, seed=0)


def test_largest_remainder_is_the_one_quota_rule_of_the_split_and_of_pruning():
    from leanrobust.data.pool import largest_remainder
    from leanrobust.selection.pruning import class_quotas

    # exact shares 2.5, 0, 1.5, 1: the tied remainders go to the earlier group, an empty group gets none
    assert largest_remainder([5, 0, 3, 2], 5).tolist() == [3, 0, 1, 1]
    assert largest_remainder([30, 20, 10], 12).tolist() == [6, 4, 2] and largest_remainder([4, 4], 0).tolist() == [0, 0]
    y = torch.tensor([0] * 5 + [2] * 3 + [3] * 2)
    assert class_quotas(y, 5) == {0: 3, 2: 1, 3: 1}


# ----------------------------------------------------------------------------- augmentation
def test_augment():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(augment_batch(x, crop_pad=0, flip=False), to_float(x))
    assert to_float(x).max() <= 1 and to_float(x).dtype == torch.float32
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = augment_batch(x, crop_pad=2, flip=True, generator=g1)
    assert a.shape == x.shape and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, augment_batch(x, crop_pad=2, flip=True, generator=g2))
    pad = torch.nn.functional.pad(to_float(x), (2, 2, 2, 2))
    shifted = 0
    for i in range(len(x)):  # each output is one crop of the padded image, possibly flipped
        crops = [pad[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        hits = [k for k, cr in enumerate(crops) if torch.equal(a[i], cr) or torch.equal(a[i], cr.flip(2))]
        assert hits
        shifted += 12 not in hits
    assert shifted > 0
    f = augment_batch(x, crop_pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(f[i], to_float(x[i]).flip(2)) for i in range(len(x))]
    assert all(flipped[i] or torch.equal(f[i], to_float(x[i])) for i in range(len(x))) and 0 < sum(flipped) < len(x)


# ----------------------------------------------------------------------------- sampler
def test_sampler_plain():
    gen = torch.zeros(23, dtype=torch.bool)
    s = MixingSampler(gen, 5)
    b = s.epoch(0, seed=1)
    assert len(s) == len(b) == 5 and [len(t) for t in b] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(b).tolist()) == list(range(23))
    assert all(torch.equal(u, v) for u, v in zip(b, s.epoch(0, seed=1)))
    assert not torch.equal(torch.cat(b), torch.cat(s.epoch(1, seed=1)))
    assert not torch.equal(torch.cat(b), torch.cat(s.epoch(0, seed=2)))
    s = MixingSampler(gen, 5, drop_last=True)
    assert len(s) == len(s.epoch(0, 0)) == 4 and all(len(t) == 5 for t in s.epoch(0, 0))


def test_sampler_mixing():
    gen = torch.zeros(100, dtype=torch.bool)
    gen[torch.randperm(100, generator=torch.Generator().manual_seed(0))[:30]] = True  # 70 real, 30 generated
    s = MixingSampler(gen, 10, gen_fraction=0.3)
    b = s.epoch(2, seed=5)
    assert len(s) == len(b) == 70 // 10  # an epoch: the real set's size over the batch size (Wang et al.)
    assert all(len(t) == 10 and int(gen[t].sum()) == 3 for t in b)
    real = torch.cat(b)[~gen[torch.cat(b)]]
    assert len(set(real.tolist())) == 7 * 7  # no real position repeats within an epoch
    assert len(set(torch.cat([torch.cat(s.epoch(e, seed=5)) for e in range(6)]).tolist()) - set(gen.nonzero().flatten().tolist())) == 70
    s = MixingSampler(gen, 10, gen_fraction=0.5)  # 7 batches x 5 generated = 35 > 30 generated: wraps
    b = s.epoch(0, seed=0)
    g = torch.cat([t[gen[t]] for t in b])
    assert len(b) == 7 and torch.bincount(g, minlength=100)[gen].min() >= 1
    assert len(set(g[:30].tolist())) == 30  # a full pass before any repeat
    s = MixingSampler(gen, 10, gen_fraction=1.0)  # generated only: still the real set's 70 / 10 steps
    assert len(s) == 7 and all(gen[t].all() for t in s.epoch(0, 0))
    assert len(MixingSampler(torch.ones(30, dtype=torch.bool), 10, gen_fraction=1.0)) == 3  # no real data
    for bad in (dict(gen_fraction=1.5), dict(gen_fraction=-0.1), dict(batch_size=0)):
        with pytest.raises(ValueError):
            MixingSampler(gen, **{"batch_size": 10, **bad})
    with pytest.raises(ValueError, match="no generated"):
        MixingSampler(torch.zeros(10, dtype=torch.bool), 4, gen_fraction=0.5)
    assert MixingSampler(gen, 10, gen_fraction=0.25).gen_per_batch == 3  # halves round up, not to even
    assert MixingSampler(gen, 10, gen_fraction=0.45).gen_per_batch == 5
    for f, b in ((0.04, 10), (0.96, 10)):  # 0 generated or 0 real per batch: a mixed run would not mix
        with pytest.raises(ValueError, match=f"gen_fraction={f} of a batch of {b} gives"):
            MixingSampler(gen, b, gen_fraction=f)


@pytest.mark.parametrize("gen_fraction", [None, 0.25])
def test_sampler_ddp_shards(gen_fraction):
    gen = torch.arange(90) >= 60
    samplers = [MixingSampler(gen, 8, gen_fraction=gen_fraction, rank=r, world_size=3) for r in range(3)]
    shards = [s.epoch(4, seed=9) for s in samplers]
    assert len({len(s) for s in samplers}) == 1 and all(len(b) == len(samplers[0]) for b in shards)
    assert all(len(t) == 8 for b in shards for t in b)  # equal batch sizes on every rank
    if gen_fraction is None:  # 90 // 8 = 11 whole batches -> 3 per rank; disjoint
        flat = torch.cat([torch.cat(b) for b in shards]).tolist()
        assert len(flat) == len(set(flat)) == 72
    else:  # ceil(60 real / 8) = 8 global batches -> 2 per rank, 6 real each; real positions disjoint across ranks
        real = [set(torch.cat(b)[~gen[torch.cat(b)]].tolist()) for b in shards]
        assert all(len(r) == 12 for r in real) and not (real[0] & real[1] or real[1] & real[2] or real[0] & real[2])
    single = MixingSampler(gen, 8, gen_fraction=gen_fraction).epoch(4, seed=9)
    assert torch.equal(shards[1][0], single[1]) and torch.equal(shards[2][1], single[5])


def test_sampler_draws_in_proportion_to_weights():
    w = torch.tensor([8.0, 1.0, 1.0, 0.0, 2.0, 0.0])
    s = MixingSampler(torch.zeros(6, dtype=torch.bool), 4, weights=w)
    assert len(s) == 2  # as many batches as plain shuffling
    draws = torch.cat([torch.cat(s.epoch(e, seed=1)) for e in range(3000)])
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    torch.testing.assert_close(freq, (w / w.sum()).double(), atol=0.01, rtol=0)
    assert freq[3] == 0 and freq[5] == 0  # weight 0 is never drawn
    assert all(torch.equal(a, b) for a, b in zip(s.epoch(7, 2), s.epoch(7, 2)))
    ranks = [MixingSampler(torch.zeros(6, dtype=torch.bool), 2, weights=w, rank=r, world_size=3) for r in range(3)]
    whole = MixingSampler(torch.zeros(6, dtype=torch.bool), 2, weights=w).epoch(5, 4)
    assert [b.tolist() for r in ranks for b in r.epoch(5, 4)] == [whole[i].tolist() for i in (0, 1, 2)]
    for bad in (torch.ones(5), torch.tensor([1.0, -1, 1, 1, 1, 1]), torch.zeros(6), torch.full((6,), float("nan"))):
        with pytest.raises(ValueError, match="weights"):
            MixingSampler(torch.zeros(6, dtype=torch.bool), 4, weights=bad)
    with pytest.raises(ValueError, match="cannot be combined"):
        MixingSampler(torch.arange(6) > 2, 4, gen_fraction=0.5, weights=w)


# ----------------------------------------------------------------------------- build (config -> tensors)
def _npz(path, n, shape=(8, 8), classes=4, sort=True):
    labels = np.sort(np.arange(n) % classes) if sort else np.arange(n) % classes  # class-sorted by default
    images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    np.savez(path, image=images, label=labels)
    return path


def test_validation_order_is_random_on_a_class_sorted_dataset(tmp_path):
    """Per-epoch validation uses the first validation.n points of the split: they must span the classes."""
    from leanrobust.config import validate_config
    from leanrobust.data.build import build_training_data

    cfg = validate_config({"data": {"dataset": "npz", "path": str(_npz(tmp_path / "d.npz", 80)), "num_classes": 4,
                                    "val_size": 40}})
    data = build_training_data(cfg.data, seed=0)
    assert torch.bincount(data.val.labels, minlength=4).tolist() == [10] * 4
    assert len(set(data.val.labels[:8].tolist())) >= 3  # sorted order would give one class only
    again = build_training_data(cfg.data, seed=0)
    assert torch.equal(data.val.images, again.val.images) and torch.equal(data.pool.images, again.pool.images)


@pytest.mark.parametrize("key", ["pool", "generated"])
def test_extra_npz_of_another_image_shape_is_refused_naming_the_file(tmp_path, key):
    from leanrobust.config import validate_config
    from leanrobust.data.build import build_training_data

    extra = _npz(tmp_path / "extra.npz", 12, shape=(8, 8, 3))
    cfg = validate_config({"data": {"dataset": "npz", "path": str(_npz(tmp_path / "d.npz", 40)), "num_classes": 4,
                                    "val_size": 4, key: str(extra)}})
    with pytest.raises(DataError, match=r"extra.npz: images are \(3, 8, 8\).*\(1, 8, 8\)"):
        build_training_data(cfg.data, seed=0)
