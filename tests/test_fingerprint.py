"""Pool fingerprints (issue 19, item 1): a Selection, score file or compressed pool made on one training pool is
refused on another, naming the setting that differs; files without a fingerprint still train, with a warning."""
import json
import warnings

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from leanrobust.cli import app
from leanrobust.config import validate_config
from leanrobust.data.build import build_training_data
from leanrobust.data.fingerprint import (KEY, SOURCE_KEY, PoolMismatchError, check_fingerprint, content_hash,
                                         pool_fingerprint, train_hint)
from leanrobust.selection import Selection
from leanrobust.train import Trainer

runner = CliRunner()


@pytest.fixture
def base(tiny_npz_config):
    """(config path, raw config dict) of the 90-image, 3-class npz set (81 pool images after 9 held out)."""
    path = tiny_npz_config(progress=False)
    return path, yaml.safe_load(path.read_text())


def cfg_with(raw: dict, seed: int = 0, **data):
    return validate_config({**raw, "seed": seed, "data": {**raw["data"], **data}})


def fingerprint(raw, seed=0, **data):
    cfg = cfg_with(raw, seed, **data)
    return pool_fingerprint(cfg.data, cfg.seed, build_training_data(cfg.data, cfg.seed).pool)


def write_npz(path, n, shift=0):
    rng = np.random.default_rng(shift)
    labels = (np.arange(n) + shift) % 3
    np.savez(path, image=rng.integers(0, 255, (n, 28, 28, 1)).astype(np.uint8), label=labels)
    return str(path)


# ----------------------------------------------------------------------------- the reported bug
def test_selection_made_on_a_train_subset_is_refused_on_the_full_set(base, tmp_path):
    """The issue's case: a selection made with data.train_subset trains silently on other images of the full set."""
    config, raw = base
    out = tmp_path / "sel.npz"
    r = runner.invoke(app, ["compress", str(config), "--method", "random", "--fraction", "0.5",
                            "--set", "data.train_subset=30", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "--set data.train_subset=30" in r.output and f"--set data.selection={out}" in r.output
    sel = Selection.load(out)
    assert sel.pool_fingerprint["train_subset"] == 30 and sel.pool_fingerprint["n"] == 30
    with pytest.raises(PoolMismatchError) as e:
        Trainer(cfg_with(raw, selection=str(out)), tmp_path / "run")
    msg = str(e.value)
    assert "data.train_subset: made with data.train_subset=30, this run has none" in msg
    assert "add --set data.train_subset=30" in msg and "pool size: made on 30 samples, this run's pool has 81" in msg
    assert "seed" not in msg  # the subset's seed is this run's seed: nothing to add
    r = runner.invoke(app, ["train", str(config), "--set", f"data.selection={out}", "--out", str(tmp_path / "cli")])
    assert r.exit_code == 2 and "data.train_subset" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "cli" / "checkpoint.pt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matching fingerprint: no warning either
        summary = Trainer(cfg_with(raw, selection=str(out), train_subset=30), tmp_path / "ok").fit()
    assert summary["n_train"] == 15 and summary["n_pool"] == 30


# ----------------------------------------------------------------------------- each field
@pytest.mark.parametrize("change,needle", [
    ({"train_subset": 40}, "data.train_subset: made with none, this run has data.train_subset=40"),
    ({"val_size": 12}, "data.val_size: made with data.val_size=9, this run has data.val_size=12"),
    ({"val_seed": 5}, "data.val_seed: made with data.val_seed=0, this run has data.val_seed=5"),
    ({"generated": "GEN"}, "data.generated: made without data.generated"),
    ({"pool": "POOL"}, "data.pool: made without data.pool"),
    ({"path": "OTHER"}, "holds other data"),
])
def test_every_pool_setting_is_compared_and_named(base, tmp_path, change, needle):
    _, raw = base
    change = {k: (write_npz(tmp_path / f"{v}.npz", 20, shift=1) if v in ("GEN", "POOL", "OTHER") else v)
              for k, v in change.items()}
    if "path" in change:
        change["test_path"] = change["path"]
    made, ours = fingerprint(raw), fingerprint(raw, **change)
    check_fingerprint(made, dict(made), "same")  # the same settings: accepted
    with pytest.raises(PoolMismatchError) as e:
        check_fingerprint(ours, made, "sel.npz")
    assert needle in str(e.value) and str(e.value).startswith("sel.npz was made on another training pool")


def test_the_seed_that_drew_the_subset_and_a_file_moved_elsewhere(base, tmp_path):
    _, raw = base
    a, b = fingerprint(raw, seed=1, train_subset=40), fingerprint(raw, seed=2, train_subset=40)
    with pytest.raises(PoolMismatchError, match=r"seed: made with seed=1, this run has seed=2[\s\S]*add --set seed=1"):
        check_fingerprint(b, a, "sel.npz")
    assert fingerprint(raw, seed=1)["subset_seed"] is None  # without a subset the run's seed does not draw the pool
    check_fingerprint(fingerprint(raw, seed=1), fingerprint(raw, seed=2), "sel.npz")
    gen = write_npz(tmp_path / "gen.npz", 20)
    moved = tmp_path / "moved.npz"
    moved.write_bytes((tmp_path / "gen.npz").read_bytes())
    check_fingerprint(fingerprint(raw, generated=str(moved)), fingerprint(raw, generated=gen), "sel.npz")
    assert content_hash(gen) == content_hash(moved) != content_hash(write_npz(tmp_path / "g2.npz", 20, shift=1))


def test_other_labels_under_the_same_settings_are_refused(base):
    _, raw = base
    made = fingerprint(raw)
    with pytest.raises(PoolMismatchError, match="labels: differ[\\s\\S]*make it again on this run's pool"):
        check_fingerprint(made, {**made, "labels_sha256": "0" * 64}, "sel.npz")


def test_shard_folder_hash_changes_with_a_shard(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(2):
        write_npz(folder / f"p{i}.npz", 10, shift=i)
    before = content_hash(folder)
    write_npz(folder / "p1.npz", 10, shift=5)
    assert content_hash(folder) != before


# ----------------------------------------------------------------------------- files without one
def test_selection_files_without_a_fingerprint_warn_and_train(base, tmp_path):
    _, raw = base
    Selection(torch.arange(0, 81, 3), torch.ones(27), torch.full((27,), 0.05)).save(tmp_path / "old.npz")
    np.savez(tmp_path / "hand.npz", indices=np.arange(10), weight=np.ones(10), eps=np.full(10, 0.05))
    with pytest.warns(UserWarning, match="records no pool fingerprint"):
        summary = Trainer(cfg_with(raw, selection=str(tmp_path / "old.npz")), tmp_path / "run").fit()
    assert summary["n_train"] == 27
    with pytest.warns(UserWarning, match="cannot check"):
        assert len(Trainer(cfg_with(raw, selection=str(tmp_path / "hand.npz")), tmp_path / "run2").selection) == 10
    with np.load(tmp_path / "old.npz", allow_pickle=False) as z:
        assert KEY not in z.files


def test_a_saved_fingerprint_reads_back_without_pickles_and_a_bad_one_is_refused(base, tmp_path):
    _, raw = base
    fp = fingerprint(raw)
    Selection(torch.arange(5), torch.ones(5), torch.full((5,), 0.1)).save(tmp_path / "s.npz", fingerprint=fp)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z[KEY].shape == () and json.loads(str(z[KEY])) == fp
    assert Selection.load(tmp_path / "s.npz").pool_fingerprint == fp
    np.savez(tmp_path / "bad.npz", indices=np.arange(3), weight=np.ones(3), eps=np.ones(3), **{KEY: np.array("{no")})
    with pytest.raises(ValueError, match="bad.npz: unreadable pool_fingerprint"):
        Selection.load(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- score -> select -> train
def test_score_file_fingerprint_reaches_the_selection_and_is_checked(base, tmp_path):
    config, raw = base
    scores, sel = tmp_path / "s.npz", tmp_path / "sel.npz"
    r = runner.invoke(app, ["score", str(config), "--method", "random", "--set", "data.train_subset=30",
                            "--out", str(scores)])
    assert r.exit_code == 0, r.output
    from leanrobust.selection.scores_file import read_scores

    arrays, meta = read_scores(scores)
    assert meta[KEY]["train_subset"] == 30 and KEY not in arrays and meta["overrides"] == ["data.train_subset=30"]
    r = runner.invoke(app, ["select", str(scores), "--fraction", "0.5", "--prune", "lowest", "--out", str(sel)])
    assert r.exit_code == 0, r.output
    assert (f"train with: leanrobust train {config} --set data.train_subset=30 --set data.val_size=9 "
            f"--set data.selection={sel}\n") in r.output  # val_size: the config's, not the default
    assert "data.weighting" not in r.output  # unit weights: no covering
    assert Selection.load(sel).pool_fingerprint == meta[KEY]
    with pytest.raises(PoolMismatchError, match="data.train_subset"):
        Trainer(cfg_with(raw, selection=str(sel)), tmp_path / "run")
    assert len(Trainer(cfg_with(raw, selection=str(sel), train_subset=30), tmp_path / "ok").selection) == 15


def test_select_from_a_score_file_without_fingerprint_says_so(tmp_path):
    from leanrobust.selection.scores_file import write_scores

    write_scores(tmp_path / "s.npz", np.arange(20.0), np.arange(20) % 2, np.arange(20), np.zeros(20, bool),
                 {"method": "loss", "eps": 0.1})
    r = runner.invoke(app, ["select", str(tmp_path / "s.npz"), "--fraction", "0.5", "--out", str(tmp_path / "o.npz")])
    assert r.exit_code == 0 and "records no pool fingerprint" in r.output
    assert "leanrobust train CONFIG --set data.selection=" in r.output
    assert Selection.load(tmp_path / "o.npz").pool_fingerprint is None


# ----------------------------------------------------------------------------- compress outputs
def test_covering_hint_and_check(base, tmp_path):
    config, raw = base
    out = tmp_path / "mfc.npz"
    r = runner.invoke(app, ["compress", str(config), "--method", "mfc", "--ipc", "3", "--set", "data.train_subset=45",
                            "--set", "seed=2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    hint = r.output.split("train with: ", 1)[1].strip()
    assert hint == (f"leanrobust train {config} --set data.train_subset=45 --set seed=2 --set data.val_size=9 "
                    f"--set data.selection={out} --set data.weighting=sample")
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["train"] == hint and rep["pool_fingerprint"] == Selection.load(out).pool_fingerprint
    with pytest.raises(PoolMismatchError, match="seed: made with seed=2, this run has seed=0"):
        Trainer(cfg_with(raw, selection=str(out), train_subset=45, weighting="sample"), tmp_path / "run")
    Trainer(cfg_with(raw, seed=2, selection=str(out), train_subset=45, weighting="sample"), tmp_path / "ok")


def test_dm_pool_records_its_source_and_a_run_on_another_split_is_refused(base, tmp_path):
    config, raw = base
    out = tmp_path / "dm.npz"
    r = runner.invoke(app, ["compress", str(config), "--method", "dm", "--ipc", "2", "--iterations", "2",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"train with: leanrobust train {config} --set data.val_size=9 --set data.pool={out}" in r.output
    with np.load(out, allow_pickle=False) as z:
        assert json.loads(str(z[SOURCE_KEY]))["n"] == 81
    with pytest.raises(PoolMismatchError, match="data.val_size: made with data.val_size=9, this run has "
                                                "data.val_size=12"):
        Trainer(cfg_with(raw, pool=str(out), val_size=12), tmp_path / "run")
    tr = Trainer(cfg_with(raw, pool=str(out)), tmp_path / "ok")
    assert len(tr.pool) == 6 and tr.pool_fingerprint["pool_sha256"] == content_hash(out)
    # a Selection over the dm pool is tied to that pool file
    Selection(torch.arange(3), torch.ones(3), torch.full((3,), 0.05)).save(tmp_path / "s.npz",
                                                                          fingerprint=tr.pool_fingerprint)
    Trainer(cfg_with(raw, pool=str(out), selection=str(tmp_path / "s.npz")), tmp_path / "ok2")
    with pytest.raises(PoolMismatchError, match=f"data.pool: made with data.pool={out}, this run has none"):
        Trainer(cfg_with(raw, selection=str(tmp_path / "s.npz")), tmp_path / "run2")


# ----------------------------------------------------------------------------- the hint
def test_train_hint_gives_the_complete_command():
    fp = {"train_subset": 2000, "subset_seed": 3, "val_size": 2000, "val_seed": 0, "pool_sha256": None}
    assert train_hint("c.yaml", "my sel.npz", overrides=["data.train_subset=2000", "objective.eps=0.2",
                                                         "data.selection=old.npz"],
                      fingerprint=fp, sample_weighting=True) == (
        "leanrobust train c.yaml --set data.train_subset=2000 --set objective.eps=0.2 --set seed=3 "
        "--set 'data.selection=my sel.npz' --set data.weighting=sample")
    legacy = {"train_subset": None, "subset_seed": 0, "val_size": 500, "val_seed": None, "pool_sha256": None}
    assert train_hint(None, "p.npz", fingerprint=legacy, kind="pool") == (
        "leanrobust train CONFIG --set data.val_size=500 --set data.val_seed=null --set data.pool=p.npz")
    assert train_hint("c.yaml", "s.npz") == "leanrobust train c.yaml --set data.selection=s.npz"
