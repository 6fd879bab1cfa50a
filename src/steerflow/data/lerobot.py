"""LeRobot v3 datasets on local disk -> the episode layout of ``imports`` (time along axis 0).

Read with ``pyarrow`` directly: the ``lerobot`` package (0.5+) needs Python >= 3.12 (this venv is
3.11) and 0.4.x pulls torch and the CUDA wheels (several GB) to read what are plain Parquet
files. Layout read (LeRobot's codebase v3.0): ``meta/info.json`` with ``codebase_version``,
``fps`` and ``features`` (name -> dtype, shape), and frames in ``data/chunk-*/file-*.parquet``,
one row per frame with ``episode_index``, ``frame_index``, ``action`` and the
``observation.*`` features; optional ``next.reward`` and ``next.done``. Several episodes share a
file; frames are grouped by ``episode_index`` and ordered by ``frame_index``. ``obs_keys`` picks
the float features concatenated into ``observations`` (default: every 1-D float
``observation.*`` feature, sorted by name). Image and video features (PNG in Parquet, MP4) are not
decoded here: naming one is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from steerflow.errors import DataError

FLOAT_DTYPES = ("float32", "float64", "float16")


DTYPE_KINDS = {"float": "f", "int": "iu", "uint": "u", "bool": "b"}  # declared dtype prefix -> numpy kinds


def _column(table, key: str, where: str, feature: dict) -> np.ndarray:
    """Column `key` as (rows, width), checked against its meta/info.json feature (shape and dtype)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shape = feature.get("shape") or [1]
    width = int(np.prod(shape))
    col = table.column(key).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != width or lengths.max() != width):
            raise DataError(f"{where}: column {key!r} has rows of length {int(lengths.min())}..{int(lengths.max())}, "
                            f"meta/info.json states {width}")
        values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
    else:
        if width != 1:
            raise DataError(f"{where}: column {key!r} holds one value per row, meta/info.json states shape "
                            f"{list(shape)} ({width} values)")
        values = col.to_numpy(zero_copy_only=False).reshape(len(col), 1)
    declared = str(feature.get("dtype", ""))
    kinds = next((k for prefix, k in DTYPE_KINDS.items() if declared.startswith(prefix)), None)
    if kinds is not None and values.dtype.kind not in kinds:
        raise DataError(f"{where}: column {key!r} has dtype {values.dtype}, meta/info.json states {declared}")
    return values


def _features(info, info_path: Path) -> dict:
    """The `features` of a parsed meta/info.json: {name: {"dtype", "shape"}} (DataError otherwise)."""
    if not isinstance(info, dict):
        raise DataError(f"{info_path}: expected a JSON object (codebase_version, fps, features), got a "
                        f"{type(info).__name__}")
    features = info.get("features") or {}
    if not isinstance(features, dict):
        raise DataError(f"{info_path}: 'features' is a {type(features).__name__}, expected an object "
                        "{name: {dtype, shape}}")
    for name, feature in features.items():
        shape = feature.get("shape", [1]) if isinstance(feature, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise DataError(f"{info_path}: feature {name!r} is {json.dumps(feature)}; expected "
                            "{\"dtype\": ..., \"shape\": [positive integers]}")
    return features


def read(path: str | Path, obs_keys: list[str] | None = None):
    """(episodes, episode names, options) of a LeRobot v3 dataset directory."""
    import pyarrow.parquet as pq

    root = Path(path)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: {root} is not a LeRobot dataset directory")
    try:
        info = json.loads(info_path.read_text())
    except ValueError as err:
        raise DataError(f"{info_path}: not valid JSON ({err})") from None
    features = _features(info, info_path)
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DataError(f"{info_path}: codebase_version {version or '(none)'}; this reader takes LeRobot v3 datasets")
    for key in ("action", "episode_index", "frame_index"):
        if key not in features:
            raise DataError(f"{info_path}: features lack {key!r}")
    if obs_keys is None:
        obs_keys = sorted(k for k, f in features.items() if k.startswith("observation.")
                          and f.get("dtype") in FLOAT_DTYPES and len(f.get("shape", [])) == 1)
    for key in obs_keys:
        if key not in features:
            raise DataError(f"{info_path}: no feature {key!r} (has: {', '.join(sorted(features))})")
        if features[key].get("dtype") not in FLOAT_DTYPES:  # (`_column` checks the column holds them)
            raise DataError(f"{info_path}: feature {key!r} has dtype {features[key].get('dtype')}; only float "
                            "features are read (image and video features are not decoded)")
    if not obs_keys:
        raise DataError(f"{info_path}: no float observation.* feature; name one with --obs-keys")
    files = sorted((root / "data").glob("chunk-*/*.parquet"))
    if not files:
        raise DataError(f"{root / 'data'}: no chunk-*/*.parquet files")
    optional = [k for k in ("next.reward", "next.done") if k in features]
    columns = ["episode_index", "frame_index", "action", *obs_keys, *optional]
    parts = {k: [] for k in columns}
    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"{f}: not a readable Parquet file ({type(err).__name__}: {err})") from None
        for key in columns:
            if key not in table.column_names:
                raise DataError(f"{f}: no column {key!r} (has: {', '.join(table.column_names)})")
            parts[key].append(_column(table, key, str(f), features[key]))
    data = {k: np.concatenate(v) for k, v in parts.items()}
    if data["action"].dtype.kind != "f":
        raise DataError(f"{root}: column 'action' has dtype {data['action'].dtype}, expected float")
    episode, frame = data["episode_index"][:, 0], data["frame_index"][:, 0]
    episodes, names = [], []
    for e in np.unique(episode):
        rows = np.flatnonzero(episode == e)
        rows = rows[np.argsort(frame[rows], kind="stable")]
        if not np.array_equal(frame[rows], np.arange(len(rows))):
            raise DataError(f"{root}: episode {int(e)} has frame_index gaps or repeats (expected 0..{len(rows) - 1})")
        ep = {"observations": np.concatenate([data[k][rows] for k in obs_keys], axis=1), "actions": data["action"][rows]}
        if "next.reward" in data:
            ep["rewards"] = data["next.reward"][rows, 0]
        if "next.done" in data:
            ep["dones"] = data["next.done"][rows, 0]
        episodes.append(ep)
        names.append(f"episode {int(e)}")
    return episodes, names, {"obs_keys": list(obs_keys), "fps": info.get("fps")}
