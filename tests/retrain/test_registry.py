"""The model registry: versions, current pointers, rollback, change polling."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import orjson
import pytest

from detector.config import RetrainingSettings, Settings, StateSettings
from detector.model.params import LSTMParams, make_shape
from detector.retrain.registry import ModelRegistry, RegistryError, VersionMeta, models_dir

SHAPE = make_shape(n_inputs=1, n_outputs=1, hidden=4)


def weights(seed: int) -> LSTMParams:
    return LSTMParams.init(SHAPE, np.random.default_rng(seed))


def meta(parent: str | None = None, loss: float | None = 0.5) -> VersionMeta:
    return VersionMeta(
        feature_names=("value",),
        parent=parent,
        candidate_loss=loss,
        parent_loss=None if parent is None else 1.0,
        windows=10,
        data={"streams": 2, "points": 100, "first_ts": 1.0, "last_ts": 99.0},
    )


def test_publish_get_list_and_current(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.list() == [] and reg.current("default") is None
    assert reg.current_params("default") is None
    v1 = reg.publish("default", weights(1), meta())
    v2 = reg.publish("default", weights(2), meta(parent=v1, loss=0.25))
    assert len(v1) == 12 and v1 != v2
    assert reg.current("default") == v2
    assert [i.version for i in reg.list()] == sorted(
        [v1, v2], key=lambda v: (reg.get(v).created_at, v)
    )
    info = reg.get(v2)
    assert (info.group, info.parent, info.candidate_loss, info.parent_loss) == (
        "default",
        v1,
        0.25,
        1.0,
    )
    assert info.data["points"] == 100 and info.source == "retrain" and info.windows == 10
    assert reg.get(v2[:6]).version == v2  # a unique prefix will do
    npt.assert_array_equal(reg.params(v1).theta, weights(1).theta)
    version, params = reg.current_params("default")
    assert version == v2 and params.theta.tobytes() == weights(2).theta.tobytes()
    assert reg.groups() == ["default"]


def test_publishing_the_same_weights_again_is_a_no_op(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.publish("g", weights(1), meta())
    created = reg.get(v).created_at
    assert reg.publish("g", weights(1), meta(parent="x")) == v
    assert reg.get(v).created_at == created and reg.get(v).parent is None
    assert len(reg.list("g")) == 1


def test_unknown_ambiguous_and_damaged_versions_are_refused(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.publish("a", weights(1), meta())
    reg.publish("b", weights(1), meta())  # the same weights in another group
    with pytest.raises(RegistryError, match="ambiguous"):
        reg.get(v)
    assert reg.get(v, group="b").group == "b"
    with pytest.raises(RegistryError, match="not in"):
        reg.get("0123456789ab")
    with pytest.raises(RegistryError, match="not a version id"):
        reg.get("../etc")
    with pytest.raises(RegistryError, match="not valid"):
        reg.publish("..", weights(1), meta())
    v3 = reg.publish("a", weights(3), meta(), make_current=False)
    (tmp_path / "a" / f"{v3}.npz").write_bytes(b"garbage")
    with pytest.raises(RegistryError, match=r"model file .*\.npz"):
        reg.set_current("a", v3)
    assert reg.current("a") == v


def test_rollback_is_seen_by_another_registry_through_poll_changes(tmp_path):
    daemon = ModelRegistry(tmp_path)
    v1 = daemon.publish("default", weights(1), meta())
    v2 = daemon.publish("default", weights(2), meta(parent=v1))
    assert daemon.poll_changes() == []  # its own switches are no news
    operator = ModelRegistry(tmp_path)
    operator.set_current("default", v1)
    pointer = orjson.loads((tmp_path / "default" / "current.json").read_bytes())
    assert pointer["version"] == v1 and pointer["previous"] == v2
    (change,) = daemon.poll_changes()
    assert (change.group, change.version) == ("default", v1)
    npt.assert_array_equal(change.params.theta, weights(1).theta)
    assert daemon.poll_changes() == []


def test_a_pointer_to_a_broken_version_is_skipped_once(tmp_path):
    daemon = ModelRegistry(tmp_path)
    v1 = daemon.publish("default", weights(1), meta())
    v2 = daemon.publish("default", weights(2), meta(), make_current=False)
    (tmp_path / "default" / f"{v2}.npz").write_bytes(b"garbage")
    # Someone wrote the pointer by hand, past set_current's check.
    (tmp_path / "default" / "current.json").write_bytes(orjson.dumps({"version": v2}))
    assert daemon.poll_changes() == []
    assert daemon.poll_changes() == []
    assert v1 != v2


def test_models_dir_from_settings(tmp_path):
    assert models_dir(Settings()) is None
    s = Settings(state=StateSettings(dir=str(tmp_path)))
    assert models_dir(s) == tmp_path / "models"
    s = Settings(state=StateSettings(dir="x"), retraining=RetrainingSettings(models_dir="m"))
    assert str(models_dir(s)) == "m"
