"""Declared choices are the only list: every config field that declares ``choices`` refuses
anything else with one line naming its flag and the choices, from Python as from the CLI;
``Store.select`` builds its ``SelectConfig`` from the same declarations as ``ingest``."""

import numpy as np
import pytest

import gradstore
from gradstore.choices import METHODS, SCAN_MODES
from gradstore.config import IngestConfig, RunConfig, SelectConfig, WarmupConfig, leaves
from gradstore.errors import GradstoreError

REQUIRED = {SelectConfig: {}, IngestConfig: {"table": "t", "model": "m", "data": "d.jsonl"},
            WarmupConfig: {"model": "m", "data": "d.jsonl", "out": "o"},
            RunConfig: {"model": "m", "data": "d.jsonl", "out": "o"}}


def declared(cls):
    return [(path, f) for path, f in leaves(cls) if f.metadata.get("choices")]


@pytest.mark.parametrize("cls", list(REQUIRED), ids=lambda c: c.__name__)
def test_every_declared_choice_is_enforced(cls):
    fields = declared(cls)
    assert fields  # each command config declares some
    for path, f in fields:
        wrong = ("gtp", "nope") if f.metadata.get("repeat") else "nope"
        cfg = cls.from_options(**REQUIRED[cls], **{path[-1]: wrong})
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        with pytest.raises(GradstoreError) as err:
            cfg.validate()
        msg = str(err.value)
        assert msg.startswith(f"{flag} 'nope' is not one of ") and "\n" not in msg
        assert msg.endswith(", ".join(map(str, f.metadata["choices"])))


def test_the_lists_are_the_ones_users_see():
    """Spot checks against the literal lists (a declaration that drifted fails here)."""
    with pytest.raises(GradstoreError, match=r"^--method 'omg' is not one of "
                       + ", ".join(METHODS) + "$"):
        SelectConfig(method="omg").validate()
    with pytest.raises(GradstoreError, match=r"^--scan-mode 'disk' is not one of "
                       + ", ".join(SCAN_MODES) + "$"):
        SelectConfig(mode="disk").validate()
    assert set(SCAN_MODES) == {"auto", "ram", "stream"}
    for ok in ({"method": "less"}, {"mode": "stream"}, {"part_score": "mean"}):
        SelectConfig.from_options(**ok).validate()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = gradstore.open(tmp_path_factory.mktemp("cfg") / "s")
    rng = np.random.default_rng(0)
    s.import_vectors("pool", rng.standard_normal((60, 16)).astype(np.float32), kind="pool")
    s.import_vectors("tgt", rng.standard_normal((4, 16)).astype(np.float32), kind="target")
    return s


def test_select_takes_options_or_a_config_and_options_override_it(store):
    by_options = store.select("pool", "tgt", 5, method="less", save=False)
    by_config = store.select("pool", "tgt", 5, config=SelectConfig(method="less", save=False))
    overridden = store.select("pool", "tgt", 5, "less", config=SelectConfig(method="gtp"),
                              save=False)
    assert by_options.ids == by_config.ids == overridden.ids and by_options.method == "less"
    # the scores by hand: LESS ranks by the cosine with the target's mean (unit rows)
    _, P = store.vectors("pool")
    _, T = store.vectors("tgt")
    P = P / np.linalg.norm(P, axis=1, keepdims=True)
    T = T / np.linalg.norm(T, axis=1, keepdims=True)
    want = np.argsort(-(P @ T.mean(0)), kind="stable")[:5]
    assert by_options.ids == [store.ids("pool")[i] for i in want]
    gtp = store.select("pool", "tgt", 5, min_gain=0.5, save=False)
    assert gtp.params["min_gain"] == 0.5
    with pytest.raises(GradstoreError, match="has no option 'tol'"):
        store.select("pool", "tgt", 5, tol=1e-3)
    with pytest.raises(GradstoreError, match="^--method 'lesss' is not one of"):
        store.select("pool", "tgt", 5, "lesss")
