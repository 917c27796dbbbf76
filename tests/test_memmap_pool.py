"""Generated pools larger than memory: shard folders and large npz files read batch by batch."""
import os

import numpy as np
import pytest
import torch

from leanrobust.config import validate_config
from leanrobust.data import shards
from leanrobust.data.pool import Pool
from leanrobust.data.shards import ShardImages, open_images
from leanrobust.data.sources import DataError
from leanrobust.experiment import build_trainer
from leanrobust.io import load_checkpoint


def _images(n, shape=(16, 16, 1), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 4, n)


def _npz_parts(folder, images, labels, size):
    folder.mkdir()
    for i in range(0, len(images), size):  # as `synth sample` writes OUT.parts/part_iiiii.npz
        np.savez(folder / f"part_{i // size:05d}.npz", image=images[i:i + size], label=labels[i:i + size])
    (folder / "plan.json").write_text("{}")  # synth's plan file is not a shard
    return folder


def test_shard_folder_reads_the_rows_asked_for(tmp_path):
    images, labels = _images(50, (8, 8, 3))
    lazy, lab = open_images(_npz_parts(tmp_path / "parts", images, labels, 12), num_classes=4)
    ref = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert isinstance(lazy, ShardImages) and lazy.shape == (50, 3, 8, 8) and len(lazy) == 50
    assert torch.equal(lab, torch.from_numpy(labels))
    idx = torch.tensor([49, 0, 13, 13, 27, -1, 12, 11, 10, 24])  # repeats, negatives, across shard edges
    assert torch.equal(lazy[idx], ref[idx])
    assert torch.equal(lazy[5:40], ref[5:40]) and torch.equal(lazy[::7], ref[::7]) and torch.equal(lazy[3], ref[3])
    mask = torch.arange(50) % 3 == 0
    assert torch.equal(lazy[mask], ref[mask]) and lazy[torch.zeros(0, dtype=torch.long)].shape == (0, 3, 8, 8)
    view = lazy.window(10, 40)
    assert len(view) == 30 and torch.equal(view[0:30], ref[10:40]) and torch.equal(view[torch.tensor([29])], ref[[39]])
    joined = ShardImages.concat(ref[:4].clone(), lazy)  # real in memory, then generated in files
    assert torch.equal(joined[torch.tensor([0, 3, 4, 53])], torch.cat([ref[:4], ref])[[0, 3, 4, 53]])
    with pytest.raises(IndexError):
        lazy[torch.tensor([50])]


def test_raw_npy_shards_and_a_large_npz_file_are_read_lazily(tmp_path, monkeypatch):
    images, labels = _images(30)
    folder = tmp_path / "raw"
    folder.mkdir()
    for name, a, b in (("a", 0, 20), ("b", 20, 30)):
        np.save(folder / f"{name}.image.npy", images[a:b, :, :, 0])  # NxHxW: one channel
        np.save(folder / f"{name}.label.npy", labels[a:b])
    lazy, lab = open_images(folder, num_classes=4)
    assert torch.equal(lazy[torch.arange(30)], torch.from_numpy(images).permute(0, 3, 1, 2))
    np.savez(tmp_path / "one.npz", image=images, label=labels)
    assert isinstance(open_images(tmp_path / "one.npz", 4)[0], torch.Tensor)  # small: loaded as before
    monkeypatch.setattr(shards, "MMAP_BYTES", 1)
    lazy, _ = open_images(tmp_path / "one.npz", 4)
    assert isinstance(lazy, ShardImages) and torch.equal(lazy[7:9], torch.from_numpy(images[7:9]).permute(0, 3, 1, 2))


@pytest.mark.parametrize("problem,needle", [
    ("compressed", "compressed"), ("labels", "label 9 out of range"), ("shapes", "differ in shape"),
    ("empty", "no shards"), ("mixed", "both .npz and .image.npy"), ("count", "images but"),
])
def test_bad_shards_are_named(tmp_path, problem, needle):
    images, labels = _images(10)
    folder = tmp_path / "gen"
    folder.mkdir()
    if problem == "compressed":
        np.savez_compressed(folder / "p0.npz", image=images, label=labels)
    elif problem == "labels":
        np.savez(folder / "p0.npz", image=images, label=np.full(10, 9))
    elif problem == "shapes":
        np.savez(folder / "p0.npz", image=images, label=labels)
        np.savez(folder / "p1.npz", image=_images(4, (8, 8, 1))[0], label=labels[:4])
    elif problem == "mixed":
        np.savez(folder / "p0.npz", image=images, label=labels)
        np.save(folder / "p1.image.npy", images)
    elif problem == "count":
        np.savez(folder / "p0.npz", image=images, label=labels[:7])
    with pytest.raises(DataError, match=needle):
        open_images(folder, num_classes=4)


def test_reading_rows_keeps_resident_memory_flat(tmp_path):
    """Random rows of a 96 MB shard: the process's file-backed RSS grows by the rows read, not the file."""
    status = "/proc/self/status"
    if not os.path.exists(status):
        pytest.skip("needs /proc")
    n = 32_768
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "big.npz", image=images, label=np.zeros(n, dtype=np.int64))
    del images
    lazy = ShardImages([shards._open_shard(tmp_path / "big.npz", 10)[0]])  # below MMAP_BYTES: read it lazily anyway

    def rss_file_mib():
        return next(int(ln.split()[1]) for ln in open(status) if ln.startswith("RssFile")) / 1024

    before = rss_file_mib()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        lazy[torch.randint(0, n, (256,), generator=g)]
    lazy[0:n // 2]  # a long contiguous read, as scoring does
    assert rss_file_mib() - before < 16


def _npz(path, n, seed):
    images, labels = _images(n, seed=seed)
    np.savez(path, image=images, label=labels)
    return images, labels


def test_training_on_a_shard_folder_equals_training_on_the_same_npz_in_memory(tmp_path):
    """One process, bit for bit: a generated pool read per batch from shards trains the weights the same
    pool loaded whole trains (the batches hold the same pixels)."""
    _npz(tmp_path / "train.npz", 96, 1)
    _npz(tmp_path / "test.npz", 32, 2)
    images, labels = _images(80, seed=3)
    np.savez(tmp_path / "gen.npz", image=images, label=labels)
    _npz_parts(tmp_path / "gen_parts", images, labels, 24)

    def run(generated, out):
        cfg = validate_config({
            "seed": 1, "progress": False, "threads": 1,
            "data": {"dataset": "npz", "path": str(tmp_path / "train.npz"), "test_path": str(tmp_path / "test.npz"),
                     "num_classes": 4, "val_size": 16, "generated": str(generated), "gen_fraction": 0.5},
            "model": {"name": "smallcnn", "width": 0.25}, "objective": {"name": "pgd_at", "eps": 0.1, "steps": 2},
            "optim": {"epochs": 1, "batch_size": 16, "lr": 0.05},
            "selection": {"method": "loss", "fraction": 0.5, "start_epoch": 0, "params": {"batch_size": 32}},
            "validation": {"n": 16, "steps": 2}, "eval": {"n": 16, "attacks": []}})
        tr = build_trainer(cfg, tmp_path / out)
        tr.fit(stop_after_epoch=1)
        return tr, load_checkpoint(tmp_path / out / "checkpoint.pt")

    lazy_tr, lazy = run(tmp_path / "gen_parts", "lazy")
    whole_tr, whole = run(tmp_path / "gen.npz", "whole")
    assert isinstance(lazy_tr.pool.images, ShardImages) and isinstance(whole_tr.pool.images, torch.Tensor)
    assert torch.equal(lazy["selection"]["indices"], whole["selection"]["indices"])  # scored from the shards too
    assert all(torch.equal(lazy["model"][k], whole["model"][k]) for k in whole["model"])
    assert lazy["counter"] == whole["counter"]
    real = lazy_tr.pool.subset(~lazy_tr.pool.is_generated)  # a bool mask reads only those rows
    assert isinstance(real, Pool) and len(real) == lazy_tr.data.n_real
