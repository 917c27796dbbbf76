"""Weights only through safetensors, checkpoints only with weights_only loading."""
import os
import pickle

import pytest
import torch

from leanrobust.io import (WeightsError, atomic_write, load_checkpoint, load_weights, save_checkpoint, save_weights,
                           write_npz)


MARKER = "/tmp/leanrobust_test_io_pwned"


class _Evil:
    def __reduce__(self):  # unpickling it would create MARKER
        return (os.system, (f"touch {MARKER}",))


def test_weights_round_trip(tmp_path):
    m = torch.nn.Linear(3, 2)
    save_weights(tmp_path / "w.safetensors", m, {"k": "v"})
    sd = load_weights(tmp_path / "w.safetensors")
    assert torch.equal(sd["weight"], m.weight.detach()) and torch.equal(sd["bias"], m.bias.detach())
    from leanrobust.io import read_metadata
    assert read_metadata(tmp_path / "w.safetensors")["k"] == "v"


def test_pickle_where_weights_expected_is_refused(tmp_path):
    p = tmp_path / "model.safetensors"
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    p.write_bytes(pickle.dumps({"weight": _Evil()}))
    with pytest.raises(WeightsError, match="model.safetensors: not a valid safetensors weights file"):
        load_weights(p)
    import leanrobust
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        leanrobust.load(p)
    assert not os.path.exists(MARKER)  # nothing was unpickled


def test_checkpoint_refuses_arbitrary_pickles(tmp_path):
    p = tmp_path / "checkpoint.pt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(WeightsError, match="unsafe"):
        load_checkpoint(p)
    assert not os.path.exists(MARKER)
    save_checkpoint(p, {"t": torch.arange(3), "n": 1, "s": "a", "l": [1.0]})
    assert load_checkpoint(p)["n"] == 1


def test_truncated_weights(tmp_path):
    p = tmp_path / "w.safetensors"
    save_weights(p, torch.nn.Linear(30, 20))
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_weights(p)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def boom(tmp):
        tmp.write_text("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    import stat
    p = atomic_write(tmp_path / "f.txt", lambda t: t.write_text("x"))
    mode = stat.S_IMODE(p.stat().st_mode)
    assert mode & stat.S_IRGRP or os.umask(os.umask(0)) & stat.S_IRGRP


def test_truncate_jsonl_drops_later_rows_and_a_torn_line(tmp_path):
    from leanrobust.io import truncate_jsonl

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    truncate_jsonl(p, "epoch", 2)
    assert p.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    truncate_jsonl(tmp_path / "missing.jsonl", "epoch", 2)  # nothing to do


def test_write_npz_is_atomic_uncompressed_and_keeps_the_exact_name(tmp_path):
    import numpy as np

    out = write_npz(tmp_path / "sub" / "sel", path=np.arange(3), image=np.zeros((2, 4, 4, 1), np.uint8))
    assert out == tmp_path / "sub" / "sel" and sorted(p.name for p in out.parent.iterdir()) == ["sel"]  # no .npz added
    with np.load(out, allow_pickle=False) as z:
        assert z["path"].tolist() == [0, 1, 2] and z["image"].shape == (2, 4, 4, 1)
        assert all(i.compress_type == 0 for i in z.zip.infolist())  # stored: shards read it per batch
