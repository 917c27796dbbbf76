"""The config schema rejects what a user can get wrong, naming the key."""
import pytest

from leanrobust.config import ConfigError, dump_config, load_config, validate_config


def test_defaults_and_overrides_round_trip(tmp_path):
    cfg = load_config(None, ["objective.eps=0.2", "optim.milestones=[0.3, 0.6]", "data.selection=null"])
    assert cfg.objective.eps == 0.2 and cfg.optim.milestones == [0.3, 0.6]
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override,needle", [
    ("optim.epoch=3", "optim.epoch: unknown key"),
    ("optim.epochs=abc", "optim.epochs"),
    ("objective.name=madry", "objective.name"),
    ("objective.eps=-1", "objective.eps"),
    ("optim.milestones=[0.8, 0.2]", "optim.milestones"),
    ("bogus=1", "bogus: unknown key"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.epochs"])


def test_npz_dataset_needs_path_and_classes():
    with pytest.raises(ConfigError, match="npz"):
        validate_config({"data": {"dataset": "npz"}})


def test_shipped_configs_validate():
    from pathlib import Path
    root = Path(__file__).parents[1] / "configs"
    files = sorted(root.glob("*.yaml")) + [f for d in ("methods", "recipes") for f in sorted((root / d).glob("*.yaml"))]
    assert len(files) >= 12
    for f in files:
        load_config(f)


def test_unknown_objective_param_is_rejected_by_name():
    with pytest.raises(ConfigError, match="lamda"):
        validate_config({"objective": {"name": "gair_at", "params": {"lamda": -1.0}}})
    with pytest.raises(ConfigError, match="steps"):  # a managed field, not a param
        validate_config({"objective": {"name": "trades", "params": {"steps": 3}}})
    assert validate_config({"objective": {"name": "gair_at", "params": {"lam": 0.0}}}).objective.params == {"lam": 0.0}


def test_label_smoothing_an_objective_would_ignore_is_rejected():
    for name in ("mart", "gair_at"):
        with pytest.raises(ConfigError, match="label_smoothing.*trades"):
            validate_config({"objective": {"name": name, "label_smoothing": 0.1}})
        assert validate_config({"objective": {"name": name}}).objective.label_smoothing == 0.0
    assert validate_config({"objective": {"name": "trades", "label_smoothing": 0.1}}).objective.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="beta.*mart"):
        validate_config({"objective": {"name": "pgd_at", "beta": 3.0}})
    assert validate_config({"objective": {"name": "mart", "beta": 5.0}}).objective.beta == 5.0


def test_a_selection_file_and_a_selection_method_are_not_both_accepted():
    with pytest.raises(ConfigError, match="keep one"):
        validate_config({"data": {"selection": "sel.npz"}, "selection": {"method": "loss", "fraction": 0.5}})


def test_model_fields_the_model_does_not_use_are_rejected_and_dropout_reaches_the_model():
    import torch
    import yaml

    from leanrobust.runs import build_from_spec, model_spec

    with pytest.raises(ConfigError, match="model.width.*preact_resnet18"):
        validate_config({"model": {"name": "preact_resnet18", "width": 0.5}})
    with pytest.raises(ConfigError, match="activation"):
        validate_config({"model": {"name": "smallcnn", "activation": "silu"}})
    cfg = validate_config({"model": {"name": "wideresnet", "depth": 10, "widen_factor": 1, "dropout": 0.3}})
    assert validate_config(yaml.safe_load(dump_config(cfg))) == cfg  # a resolved config reloads
    info = type("Info", (), {"size": 32, "num_classes": 10, "channels": 3, "mean": (0.5,) * 3, "std": (0.5,) * 3})
    net = build_from_spec(model_spec(cfg, info))
    assert [b.dropout for b in net.modules() if type(b).__name__ == "WideBlock"] == [0.3] * 3
    small = validate_config({"model": {"dropout": 0.1}})
    info.size, info.channels, info.mean, info.std = 28, 1, (0.5,), (0.5,)
    assert [m.p for m in build_from_spec(model_spec(small, info)).modules() if isinstance(m, torch.nn.Dropout)] == [0.1]


def test_a_run_directory_config_written_before_the_usage_checks_still_loads(tmp_path):
    """Re-reading an existing run's config.yaml (resume, eval, certify) only warns about settings the
    run ignored, so runs from before those checks can be resumed and evaluated as they were trained."""
    old = {"model": {"name": "preact_resnet18", "width": 0.5}, "objective": {"name": "mart", "label_smoothing": 0.1}}
    with pytest.raises(ConfigError):
        validate_config(old)
    with pytest.warns(UserWarning, match="ignored"):
        cfg = validate_config(old, lenient=True)
    assert cfg.model.width == 0.5 and cfg.objective.label_smoothing == 0.1
