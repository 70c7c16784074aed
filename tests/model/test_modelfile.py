"""Model files round-trip bit-exactly; every kind of broken file gives one clear error."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import numpy.testing as npt
import orjson
import pytest

from detector.errors import ModelFileError
from detector.model.modelfile import ModelMetadata, load_model, save_model
from detector.model.params import LSTMParams, make_shape


@pytest.fixture
def saved(tmp_path):
    shape = make_shape(n_inputs=2, n_outputs=2, hidden=5, layers=2, head_hidden=3)
    params = LSTMParams.init(shape, np.random.default_rng(0))
    meta = ModelMetadata(
        feature_names=("cpu", "mem"), normalization={"method": "x"}, training={"best_epoch": 3}
    )
    path = tmp_path / "model.npz"
    save_model(path, params, meta)
    return path, params


def rewrite(path, change):
    """Re-pack the archive after change(arrays) -> arrays (a consistent, valid npz)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays = change(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def set_meta(arrays, **fields):
    doc = orjson.loads(arrays["__metadata__"].tobytes())
    doc.update(fields)
    arrays["__metadata__"] = np.frombuffer(orjson.dumps(doc), np.uint8)
    return arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_then_load_round_trips_bit_exactly(tmp_path, dtype):
    params = LSTMParams.init(
        make_shape(n_inputs=3, n_outputs=1, hidden=4, residual=True),
        np.random.default_rng(1),
        dtype=dtype,
    )
    meta = ModelMetadata(
        feature_names=("a", "b", "c"),
        normalization={"method": "m"},
        training={"report": {"best_epoch": 2}},
    )
    stored = save_model(tmp_path / "m.npz", params, meta)
    loaded, loaded_meta = load_model(tmp_path / "m.npz")
    assert loaded.shape == params.shape
    assert loaded.theta.dtype == dtype
    assert loaded.theta.tobytes() == params.theta.tobytes()
    assert loaded_meta == stored
    assert stored.content_hash.startswith("sha256:") and stored.created_at


def test_save_is_atomic_and_leaves_no_temporary_files(saved):
    path, _ = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npz"]


def test_truncated_file(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"model\.npz: is truncated or corrupted"):
        load_model(path)


def test_corrupted_bytes(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(
        ModelFileError, match=r"model\.npz: (is truncated or corrupted|content hash)"
    ):
        load_model(path)


def test_tampered_weights(saved):
    path, _ = saved

    def nudge(arrays):
        arrays["layer1.U"] = arrays["layer1.U"] + np.float32(1e-3)
        return arrays

    rewrite(path, nudge)
    with pytest.raises(ModelFileError, match="content hash does not match"):
        load_model(path)


def test_wrong_format_version(saved):
    path, _ = saved
    rewrite(path, lambda a: set_meta(a, format_version=99))
    with pytest.raises(ModelFileError, match="format version 99 is not supported"):
        load_model(path)


def test_shape_mismatch(saved):
    path, _ = saved
    shape = {
        "n_inputs": 2,
        "n_outputs": 2,
        "hidden": 6,
        "layers": 2,
        "head_hidden": 3,
        "head_activation": "relu",
        "residual": False,
    }
    rewrite(path, lambda a: set_meta(a, shape=shape))
    with pytest.raises(ModelFileError, match=r"tensor layer0.W has shape \(2, 20\).*\(2, 24\)"):
        load_model(path)


def test_missing_tensor(saved):
    path, _ = saved

    def drop(arrays):
        del arrays["head.a2"]
        return arrays

    rewrite(path, drop)
    with pytest.raises(ModelFileError, match=r"tensor head\.a2 is missing"):
        load_model(path)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.arange(3))
    with pytest.raises(ModelFileError, match="has no metadata"):
        load_model(path)


def test_pickled_content_is_refused(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, __metadata__=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="pickled objects"):
        load_model(path)


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match=r"garbage\.npz"):
        load_model(garbage)
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "absent.npz")


def test_invalid_metadata_json(saved):
    path, _ = saved

    def bad_json(arrays):
        arrays["__metadata__"] = np.frombuffer(b"{not json", np.uint8)
        return arrays

    rewrite(path, bad_json)
    with pytest.raises(ModelFileError, match="metadata is not valid JSON"):
        load_model(path)


def test_archive_members_are_plain_arrays(saved):
    path, params = saved
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
    assert "__metadata__.npy" in names and "layer0.W.npy" in names
    loaded, _ = load_model(path)
    npt.assert_array_equal(loaded.theta, params.theta)
