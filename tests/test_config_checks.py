"""Inputs are checked, not silently accepted: every setting a run would ignore, empty configs, out-of-range and
non-finite numbers, duplicate YAML keys, bad selection files, a partial data.root, a gzip bomb in an IDX file;
and each refusal names the file or key and says what to do."""
import gzip
import json
import struct

import numpy as np
import pytest
import torch

from leanrobust.config import ConfigError, load_config, validate_config

# (overrides, text the error must contain): each one a setting the run would silently ignore
IGNORED = [
    (["data.gen_fraction=0.5"], "data.gen_fraction"),
    (["data.weighting=sample"], "data.weighting"),
    (["optim.schedule=cosine", "optim.milestones=[0.3, 0.6]"], "optim.milestones"),
    (["optim.schedule=cosine", "optim.gamma=0.5"], "optim.gamma"),
    (["selection.every=2"], "selection.every"),
    (["objective.name=erm", "objective.step_size=0.25"], "objective.step_size"),
    (["data.test_path=test.npz"], "data.test_path"),
    (["data.num_classes=10"], "data.num_classes"),
    (["data.augment=false", "data.flip=true"], "data.flip"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov"),
]


@pytest.mark.parametrize("overrides,key", IGNORED, ids=[k for _, k in IGNORED])
def test_a_setting_the_run_would_ignore_is_rejected_and_only_warns_for_a_run_directory(overrides, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)
    run_cfg = tmp_path / "config.yaml"  # a run's own config.yaml, written before the check: still loads
    run_cfg.write_text("name: old\n")
    with pytest.warns(UserWarning, match=key.replace(".", r"\.")):
        load_config(run_cfg, overrides, lenient=True)


def test_the_same_settings_pass_where_they_act():
    for ov in (["data.generated=g.npz", "data.gen_fraction=0.5"], ["data.selection=s.npz", "data.weighting=sample"],
               ["optim.milestones=[0.3, 0.6]"], ["selection.method=loss", "selection.every=2"],
               ["objective.step_size=0.25"], ["data.dataset=npz", "data.path=a.npz", "data.test_path=b.npz",
                                              "data.num_classes=10"],
               ["data.flip=true"], ["optim.nesterov=true"]):
        load_config(None, ov)


@pytest.mark.parametrize("text", ["", "{}\n", "# only a comment\n", "null\n"])
def test_an_empty_config_file_is_an_error(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        load_config(p)
    assert load_config(p, ["optim.epochs=1"]).optim.epochs == 1  # overrides are settings
    with pytest.warns(UserWarning, match="empty"):
        load_config(p, lenient=True)


def test_linf_eps_above_one_and_zero_step_attacks_are_rejected():
    with pytest.raises(ConfigError, match=r"objective\.eps=8.*0\.0314"):
        load_config(None, ["objective.eps=8"])
    assert load_config(None, ["objective.norm=l2", "objective.eps=2.0"]).objective.eps == 2.0
    for bad in ("pgd0", "cw0", "pgd20x0"):
        with pytest.raises(ConfigError, match=f"eval.attacks.*{bad}"):
            load_config(None, [f"eval.attacks=[{bad}]"])


@pytest.mark.parametrize("override,key", [
    ("optim.lr=.inf", "optim.lr"), ("optim.weight_decay=.inf", "optim.weight_decay"),
    ("objective.step_size=.inf", "objective.step_size"),
    ("objective.name=trades;objective.beta=.inf", "objective.beta"),
    ("model.width=.inf", "model.width"), ("optim.lr=inf", "optim.lr"),
    ("objective.params={sigma: .nan}", "objective.params.sigma"), ("optim.milestones=[0.5, .nan]", "optim.milestones"),
    ("seed=18446744073709551616", "seed"), ("seed=-1", "seed"), ("optim.epochs=true", "optim.epochs"),
    ("optim.batch_size=true", "optim.batch_size"),
])
def test_non_finite_huge_and_boolean_numbers_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, override.split(";"))
    assert key in str(e.value) and ("finite" in str(e.value) or "large" in str(e.value) or "boolean" in str(e.value)
                                    or "greater than" in str(e.value))


def test_duplicate_yaml_keys_are_rejected_with_their_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("optim:\n  epochs: 3\n  lr: 0.1\n  epochs: 30\n")
    with pytest.raises(ConfigError, match=r"dup.yaml.*duplicate key 'epochs' \(first at line 2\)"):
        load_config(p)
    p.write_text("optim: {epochs: 3}\noptim: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="duplicate key 'optim'"):
        load_config(p)
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_config(None, ["objective.params={a: 1, a: 2}"])


@pytest.mark.parametrize("override,hint", [
    ("optim.epochz=3", "did you mean 'epochs'?"), ("optm.epochs=3", "did you mean 'optim'?"),
    ("optim.eps=0.3", "did you mean 'objective.eps'?"), ("objective.name=trade", "did you mean 'trades'?"),
    ("selection.method=gradmach", "did you mean 'gradmatch'?"), ("model.name=wideresnt", "did you mean 'wideresnet'?"),
    ("eval.attacks=[autoatack]", "did you mean 'autoattack'?"),
])
def test_a_mistyped_key_or_choice_gets_a_suggestion(override, hint):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert hint in str(e.value)


def test_a_resolved_config_still_round_trips():
    import yaml

    from leanrobust.config import dump_config
    cfg = load_config(None, ["objective.name=trades", "optim.schedule=cosine"])
    assert validate_config(yaml.safe_load(dump_config(cfg))) == cfg


# ----------------------------------------------------------------------------- selection files
def _sel(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays,needle", [
    (dict(indices=np.array([0.0, 1.0]), weight=np.ones(2), eps=np.ones(2)), "indices must be integers"),
    (dict(indices=np.arange(4).reshape(2, 2), weight=np.ones(4), eps=np.ones(4)), "indices must be a 1-D array"),
    (dict(indices=np.arange(3), weight=np.zeros(3), eps=np.ones(3)), "every weight is 0"),
    (dict(indices=np.arange(3), weight=np.ones(2), eps=np.ones(3)), "weight has 2 entries"),
    (dict(indices=np.arange(0), weight=np.ones(0), eps=np.ones(0)), "empty"),
    (dict(indices=np.arange(3), weight=np.array([1.0, np.nan, 1.0]), eps=np.ones(3)), "finite"),
    (dict(indices=np.arange(2), weight=np.array(["a", "b"]), eps=np.ones(2)), "weight must be a 1-D array of numbers"),
    (dict(indices=np.arange(2), weight=np.array([{}, {}], dtype=object), eps=np.ones(2)), "cannot read"),
    ({}, "empty npz"),
    (dict(indices=np.arange(2)), "missing keys"),
])
def test_bad_selection_files_are_refused_naming_the_file(tmp_path, arrays, needle):
    from leanrobust.selection import Selection
    p = _sel(tmp_path / "sel.npz", **arrays)
    with pytest.raises(ValueError, match=needle) as e:
        Selection.load(p)
    assert str(e.value).startswith(str(p))


def test_a_selection_file_that_is_not_an_npz_is_refused(tmp_path):
    from leanrobust.selection import Selection
    np.save(tmp_path / "a.npy", np.arange(3))
    (tmp_path / "b.npz").write_bytes(b"PK\x03\x04garbage")
    for p in (tmp_path / "a.npy", tmp_path / "b.npz", tmp_path / "missing.npz"):
        with pytest.raises(ValueError) as e:
            Selection.load(p)
        assert str(e.value).startswith(str(p))
    good = Selection.load(_sel(tmp_path / "ok.npz", indices=np.arange(3, dtype=np.int32), weight=np.ones(3),
                               eps=np.float32(0.1)))
    assert good.indices.tolist() == [0, 1, 2] and good.eps.tolist() == pytest.approx([0.1] * 3)


# ----------------------------------------------------------------------------- data files
def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_a_gzip_bomb_in_an_idx_file_is_refused_without_inflating_it(tmp_path, monkeypatch):
    from leanrobust.data import DataError, sources

    block = gzip.compress(bytes(16 << 20))  # 16 MB of zeros in ~16 KB; gzip members concatenate
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(_idx(np.zeros((2, 28, 28), np.uint8))) + block * 4)
    read = []
    real_open = gzip.open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            b = self.f.read(n)
            read.append(len(b))
            return b

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(gzip, "open", lambda *a, **k: Counting(real_open(*a, **k)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: IDX file has trailing bytes"):
        sources.read_idx(bomb)
    assert sum(read) < 1 << 20  # the header's announced size, not the 64 MB the stream inflates to
    huge = tmp_path / "huge-idx3-ubyte.gz"
    huge.write_bytes(gzip.compress(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 4096, 4096)))
    with pytest.raises(DataError, match="huge-idx3-ubyte.gz: IDX header announces shape"):
        sources.read_idx(huge)


def test_data_root_is_the_only_folder_read(tmp_path, monkeypatch):
    """Decided: a data.root names where the data is; a missing or half-present split there is an error
    naming root, never read from $LEANROBUST_DATA, the cache or /usr/share/datasets instead."""
    from leanrobust.data import DataNotFoundError, load_dataset, sources

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LEANROBUST_DATA", raising=False)
    system = tmp_path / "system"
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", system)
    imgs = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels = np.arange(4, dtype=np.uint8)
    (system / "mnist").mkdir(parents=True)
    for stem, arr in (("t10k-images-idx3-ubyte", imgs), ("t10k-labels-idx1-ubyte", labels)):
        (system / "mnist" / (stem + ".gz")).write_bytes(gzip.compress(_idx(arr)))
    assert load_dataset("mnist", "test", download=False)[0].shape == (4, 1, 28, 28)  # no root: searched
    root = tmp_path / "mine"
    root.mkdir()
    with pytest.raises(DataNotFoundError, match=f"searched {root} \\(data.root: only that folder"):
        load_dataset("mnist", "test", root=root, download=False)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
    with pytest.raises(DataNotFoundError, match="holds t10k-images-idx3-ubyte but not t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", "test", root=root, download=False)


# ----------------------------------------------------------------------------- weights and checkpoints
def test_safetensors_metadata_is_written_in_one_order(tmp_path):
    from leanrobust.io import save_weights
    m = torch.nn.Linear(3, 2)
    keys = ["leanrobust_model", "leanrobust_version", "epoch", "zeta", "alpha", "k5", "k6"]
    files = []
    for i, order in enumerate((keys, keys[::-1], sorted(keys), keys[3:] + keys[:3])):
        files.append(save_weights(tmp_path / f"w{i}.safetensors", m, {k: f"v{k}" for k in order}).read_bytes())
    assert all(f == files[0] for f in files)
    n = int.from_bytes(files[0][:8], "little")
    assert list(json.loads(files[0][8:8 + n])["__metadata__"]) == sorted(keys)


def test_a_failed_weights_write_names_the_file(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from leanrobust import io

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")
    monkeypatch.setattr(io, "save_file", full)
    with pytest.raises(OSError, match="model.safetensors: cannot write the weights file.*disk full"):
        io.save_weights(tmp_path / "model.safetensors", torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []


def test_a_refused_checkpoint_does_not_advise_weights_only_false(tmp_path):
    import os

    from leanrobust.io import WeightsError, load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())
    torch.save({"x": Evil()}, tmp_path / "checkpoint.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 4)
    torch.save([1, 2], tmp_path / "list.pt")
    for name, needle in (("checkpoint.pt", "posix.getcwd"), ("junk.pt", "refused"), ("list.pt", "holds a list")):
        with pytest.raises(WeightsError) as e:
            load_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(str(tmp_path / name)) and needle in msg
        assert "False" not in msg and "trusted source" not in msg


def _weights_with_spec(path, spec, model=None):
    from leanrobust.io import save_weights
    from leanrobust.runs import build_from_spec
    good = {"name": "smallcnn", "num_classes": 10, "in_channels": 1, "mean": [0.5], "std": [0.5],
            "kwargs": {"width": 0.25, "input_size": 28}}
    save_weights(path, model or build_from_spec(good), {"leanrobust_model": spec if isinstance(spec, str)
                                                        else json.dumps(spec)})
    return good


@pytest.mark.parametrize("change,needle", [
    (lambda s: {**s, "extra": 1}, r"unexpected key\(s\) \['extra'\]"),
    (lambda s: {k: v for k, v in s.items() if k != "std"}, r"missing key\(s\) \['std'\]"),
    (lambda s: {**s, "kwargs": {**s["kwargs"], "depth": 10}}, r"kwargs has unexpected key\(s\) \['depth'\]"),
    (lambda s: {**s, "kwargs": {**s["kwargs"], "width": 1e3}}, "more than the file holds"),
    (lambda s: {**s, "num_classes": 1e9}, "num_classes must be an integer"),
    (lambda s: {**s, "std": [0.0]}, "std must be positive"),
    (lambda s: {**s, "name": "vit"}, "not a leanrobust model"),
    (lambda s: "{not json", "not valid JSON"),
    (lambda s: [1, 2], "must be a JSON object"),
])
def test_unexpected_model_metadata_is_an_error_naming_file_and_key(tmp_path, change, needle):
    import leanrobust
    from leanrobust.io import WeightsError
    p = tmp_path / "model.safetensors"
    good = _weights_with_spec(p, "{}")
    _weights_with_spec(p, change(dict(good)))
    with pytest.raises(WeightsError, match=needle) as e:
        leanrobust.load(p)
    assert str(e.value).startswith(str(p)) and "leanrobust_model" in str(e.value)


def test_weights_that_do_not_fit_the_described_model_name_the_file(tmp_path):
    import leanrobust
    from leanrobust.io import WeightsError
    p = tmp_path / "model.safetensors"
    good = _weights_with_spec(p, "{}")
    _weights_with_spec(p, {**good, "num_classes": 7})
    with pytest.raises(WeightsError, match="weights do not fit the model") as e:
        leanrobust.load(p)
    assert str(e.value).startswith(str(p))


def test_cli_errors_name_the_file_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from leanrobust.cli import app
    p = tmp_path / "model.safetensors"
    good = _weights_with_spec(p, "{}")
    _weights_with_spec(p, {**good, "surprise": True})
    r = CliRunner().invoke(app, ["eval", str(p), "--dataset", "fashion_mnist", "--attacks", "pgd1", "--n", "2"])
    assert r.exit_code == 2 and "surprise" in r.output and str(p) in r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {width: .inf}\n")
    r = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "model.width" in r.output and "finite" in r.output
    assert not (tmp_path / "run").exists()
