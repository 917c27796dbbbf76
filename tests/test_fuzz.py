"""Fuzzing the inputs a person hands leanrobust (configs, npz data files, selection files): every input is
either accepted as a valid value or refused with leanrobust's own error naming the file or key, never a
traceback from deep inside, and never accepted in a state that would run wrong (non-finite, out of range)."""
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from leanrobust.config import RunConfig  # noqa: E402

# bounded for CI (a few seconds); LEANROBUST_FUZZ_EXAMPLES=2000 for a longer, randomised hunt
_N = int(os.environ.get("LEANROBUST_FUZZ_EXAMPLES", 60))
FUZZ = settings(max_examples=_N, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=_N <= 60)

# ----------------------------------------------------------------------------- configs
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                    st.sampled_from(["pgd20", "cw0", "autoattack", "trades", "cosine", "npz", "sample", "inf", "1e-3"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
SECTIONS = {name: list(f.annotation.model_fields) for name, f in RunConfig.model_fields.items()
            if hasattr(f.annotation, "model_fields")}
TOP = [k for k in RunConfig.model_fields if k not in SECTIONS]


plausible = st.one_of(st.floats(0, 2), st.integers(0, 20), st.sampled_from([None, True, False, 0.5, 1, 8 / 255]))


def _default(section, key: str):
    f = RunConfig.model_fields[section].annotation.model_fields.get(key)
    return None if f is None else f.get_default(call_default_factory=True)


@st.composite
def raw_configs(draw):
    """Mostly near-valid configs (defaults and small numbers), with random and hostile values mixed in."""
    def value(section, key):
        kind = draw(st.integers(0, 9))
        return _default(section, key) if kind < 5 else draw(plausible) if kind < 8 else draw(values)

    raw = {}
    for key in draw(st.lists(st.sampled_from(TOP * 5 + ["bogus"]), max_size=2, unique=True)):
        raw[key] = draw(st.one_of(plausible, values)) if key != "name" else draw(st.text(max_size=5))
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=3, unique=True)):
        keys = draw(st.lists(st.sampled_from(SECTIONS[section] * 8 + ["typo"]), min_size=1, max_size=3, unique=True))
        raw[section] = {k: value(section, k) for k in keys} if draw(st.integers(0, 19)) else draw(values)
    return raw


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


@FUZZ
@given(raw_configs())
def test_any_config_is_accepted_valid_or_refused_by_leanrobust(raw):
    """Through the command line (`config show`): exit 0 with a config that round-trips, or exit 2 with
    leanrobust's `error:` message; any other exception is a traceback a user would see."""
    from typer.testing import CliRunner

    from leanrobust.cli import app
    from leanrobust.config import load_config
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_text(yaml.safe_dump(raw))
        r = CliRunner().invoke(app, ["config", "show", str(p)])
        assert r.exit_code in (0, 2), (raw, r.output, r.exception)
        assert r.exception is None or isinstance(r.exception, SystemExit), (raw, r.exception)
        if r.exit_code == 0:
            cfg = load_config(p)
            assert _finite(cfg.model_dump()) and cfg.optim.epochs >= 1
            assert cfg.objective.norm != "linf" or cfg.objective.eps <= 1
        else:
            assert "error:" in r.output


@FUZZ
@given(st.text(max_size=80))
def test_any_yaml_text_is_accepted_or_refused_by_leanrobust(text):
    from leanrobust.config import ConfigError, load_config
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_text(text)
        try:
            load_config(p)
        except ConfigError as e:
            assert str(p) in str(e) or "invalid config" in str(e)


# ----------------------------------------------------------------------------- npz data files
DTYPES = [np.uint8, np.int64, np.int8, np.float32, np.float64, np.bool_, np.uint16]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES + [object]))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
    if dtype is object:
        return np.empty(shape, dtype=object)
    size = int(np.prod(shape))
    element = st.one_of(st.floats(-300, 300), st.sampled_from([math.nan, math.inf, 0.0, 1.0]))
    a = np.asarray(draw(st.lists(element, min_size=size, max_size=size)), dtype=np.float64).reshape(shape)
    with np.errstate(invalid="ignore"):
        return a.astype(dtype) if dtype is not np.float64 else a


def _write(path: Path, arrs: dict, how: str) -> None:
    if how == "bytes":
        path.write_bytes(b"PK\x03\x04" + bytes(20))
        return
    (np.savez_compressed if how == "compressed" else np.savez)(path, **arrs)
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@FUZZ
@given(st.dictionaries(st.sampled_from(["image", "label", "other"]), arrays(), max_size=3),
       st.sampled_from(["plain", "compressed", "truncated", "bytes"]))
def test_any_npz_data_file_loads_valid_or_is_refused_naming_it(arrs, how):
    import torch

    from leanrobust.data import DataError, load_npz
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "data.npz"
        _write(p, arrs, how)
        try:
            x, y = load_npz(p, num_classes=10)
        except DataError as e:
            assert str(e).startswith(str(p)), e
            return
        assert x.dtype == torch.uint8 and x.ndim == 4 and y.dtype == torch.int64 and y.ndim == 1
        assert len(x) == len(y) and (len(y) == 0 or 0 <= int(y.min()) and int(y.max()) < 10)


# ----------------------------------------------------------------------------- selection files
@FUZZ
@given(st.dictionaries(st.sampled_from(["indices", "weight", "eps", "meta"]), arrays(), max_size=4),
       st.sampled_from(["plain", "compressed", "truncated", "bytes"]), st.integers(1, 20))
def test_any_selection_file_loads_valid_or_is_refused_naming_it(arrs, how, pool):
    import torch

    from leanrobust.selection import Selection
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "sel.npz"
        _write(p, arrs, how)
        try:
            sel = Selection.load(p)
            sel.validate_for_pool(pool, str(p))
        except ValueError as e:
            assert str(e).startswith(str(p)), e
            return
        assert sel.indices.dtype == torch.int64 and sel.indices.ndim == 1 and len(sel) > 0
        assert int(sel.indices.min()) >= 0 and int(sel.indices.max()) < pool
        assert len(sel.weight) == len(sel.eps) == len(sel)
        assert torch.isfinite(sel.weight).all() and (sel.weight >= 0).all() and (sel.weight > 0).any()
        assert torch.isfinite(sel.eps).all() and (sel.eps >= 0).all()
