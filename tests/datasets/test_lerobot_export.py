"""LeRobotDataset v3.0 export checked against the published v3.0 layout, read back with
pyarrow, pandas and PyAV the way LeRobot's loader reads it."""

import json

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode import list_episodes, load_episode
from crane_x7_vla.episode.lerobot import export_lerobot
from crane_x7_vla.episode.reader import DatasetError

from .conftest import COLOURS, frame, write_episodes

# LeRobot v3.0 (lerobot/datasets/utils.py and dataset_metadata.py), stated here independently.
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
V30_INFO_KEYS = {
    "codebase_version",
    "robot_type",
    "total_episodes",
    "total_frames",
    "total_tasks",
    "chunks_size",
    "data_files_size_in_mb",
    "video_files_size_in_mb",
    "fps",
    "splits",
    "data_path",
    "video_path",
    "features",
}
V30_EPISODE_COLUMNS = {
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
    "meta/episodes/chunk_index",
    "meta/episodes/file_index",
}
VIDEO_KEYS = ("observation.images.primary", "observation.images.wrist")
TOLERANCE_S = 1e-4  # LeRobot's default tolerance between a frame's timestamp and its video frame


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    write_episodes(root / "episodes")
    summary = export_lerobot(root / "episodes", root / "out", progress=False)
    return root / "episodes", root / "out", summary


def decode_video(path):
    """{pts in seconds: RGB frame} of the first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {float(f.pts * stream.time_base): f.to_ndarray(format="rgb24") for f in container.decode(stream)}


def test_info_json_follows_v30(exported):
    _, out, summary = exported
    info = json.loads((out / "meta/info.json").read_text())
    assert set(info) == V30_INFO_KEYS
    assert info["codebase_version"] == "v3.0"
    assert info["robot_type"] == "crane_x7"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 24, 2)
    assert info["fps"] == 10 and isinstance(info["fps"], int)
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == V30_DATA_PATH and info["video_path"] == V30_VIDEO_PATH
    assert info["chunks_size"] == 1000
    features = info["features"]
    for key, spec in V30_DEFAULT_FEATURES.items():
        assert features[key] == spec
    for key in ("observation.state", "action"):
        assert features[key] == {"dtype": "float32", "shape": [8], "names": list(robot.JOINT_NAMES)}
    assert set(features) == set(V30_DEFAULT_FEATURES) | {"observation.state", "action", *VIDEO_KEYS}
    for key, (w, h) in zip(VIDEO_KEYS, [(64, 48), (32, 32)]):
        ft = features[key]
        assert ft["dtype"] == "video" and ft["shape"] == [h, w, 3]
        assert ft["names"] == ["height", "width", "channels"]
        assert ft["info"]["video.codec"] == "av1" and ft["info"]["video.pix_fmt"] == "yuv420p"
        assert (ft["info"]["video.width"], ft["info"]["video.height"], ft["info"]["video.fps"]) == (w, h, 10)
        assert ft["info"]["has_audio"] is False
    assert summary["episodes"] == 3 and summary["steps"] == 24


def test_data_parquet_holds_the_episode_arrays(exported):
    src, out, _ = exported
    table = pq.read_table(out / V30_DATA_PATH.format(chunk_index=0, file_index=0))
    assert table.schema.field("observation.state").type == pa.list_(pa.float32(), 8)
    assert table.schema.field("action").type == pa.list_(pa.float32(), 8)
    assert table.schema.field("timestamp").type == pa.float32()
    for key in ("frame_index", "episode_index", "index", "task_index"):
        assert table.schema.field(key).type == pa.int64()
    assert table.num_rows == 24
    state = np.array(table["observation.state"].to_pylist(), np.float32)
    action = np.array(table["action"].to_pylist(), np.float32)
    episode_index = table["episode_index"].to_numpy()
    frame_index = table["frame_index"].to_numpy()
    np.testing.assert_array_equal(table["index"].to_numpy(), np.arange(24))
    np.testing.assert_allclose(table["timestamp"].to_numpy(), frame_index / 10, atol=1e-6)
    tasks = pd.read_parquet(out / "meta/tasks.parquet")
    assert tasks.index.name == "task"
    for e, ref in enumerate(list_episodes(src)):
        ep = load_episode(ref.path, images=False)
        rows = episode_index == e
        np.testing.assert_array_equal(state[rows], ep.proprio)
        np.testing.assert_array_equal(action[rows], ep.action)
        np.testing.assert_array_equal(frame_index[rows], np.arange(len(ep)))
        task_index = table["task_index"].to_numpy()[rows]
        assert set(task_index) == {int(tasks.loc[ep.instruction, "task_index"])}
        assert tasks.iloc[task_index[0]].name == ep.instruction  # how LeRobot maps task_index to text


def test_episodes_metadata_and_videos_line_up(exported):
    _, out, _ = exported
    episodes = pq.read_table(out / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pylist()
    assert len(episodes) == 3
    assert V30_EPISODE_COLUMNS <= set(episodes[0])
    data = pq.read_table(out / V30_DATA_PATH.format(chunk_index=0, file_index=0))
    videos = {
        key: decode_video(out / V30_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)) for key in VIDEO_KEYS
    }
    assert all(len(frames) == 24 for frames in videos.values())
    for e, row in enumerate(episodes):
        assert row["episode_index"] == e and row["length"] == 8
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (8 * e, 8 * e + 8)
        assert row["tasks"] == [f"pick up the cube {e % 2}"]
        assert row["stats/observation.state/count"] == [8]
        assert np.array(row["stats/observation.images.primary/mean"]).shape == (3, 1, 1)
        timestamps = data["timestamp"].to_numpy()[row["dataset_from_index"] : row["dataset_to_index"]]
        for key, size in zip(VIDEO_KEYS, [(64, 48), (32, 32)]):
            assert (row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"]) == (0, 0)
            start = row[f"videos/{key}/from_timestamp"]
            assert row[f"videos/{key}/to_timestamp"] == pytest.approx(start + 0.8)
            pts = np.array(sorted(videos[key]))
            for t, ts in enumerate(timestamps):
                query = start + float(ts)
                nearest = pts[np.argmin(np.abs(pts - query))]
                assert abs(nearest - query) < TOLERANCE_S
                got = videos[key][nearest].astype(int)
                want = frame(t, size, COLOURS[e]).astype(int)
                w, h = size
                # Colour block (RGB order, no red/blue swap) and the time-varying grey level.
                assert np.abs(got[h // 2, w // 8] - np.array(COLOURS[e])).max() < 16
                assert abs(got[h // 2, 7 * w // 8].mean() - want[h // 2, 7 * w // 8].mean()) < 6


def test_stats_json_covers_every_feature(exported):
    src, out, _ = exported
    stats = json.loads((out / "meta/stats.json").read_text())
    info = json.loads((out / "meta/info.json").read_text())
    assert set(stats) == set(info["features"])
    state = np.concatenate([load_episode(r.path, images=False).proprio for r in list_episodes(src)])
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(0))
    assert stats["observation.state"]["count"] == [24]
    for key in VIDEO_KEYS:
        assert np.array(stats[key]["mean"]).shape == (3, 1, 1)
        assert 0.0 <= np.min(stats[key]["min"]) and np.max(stats[key]["max"]) <= 1.0
    assert stats["index"]["max"] == [23]


def test_h264_and_bad_rates(tmp_path):
    write_episodes(tmp_path / "a", episodes=1, steps=4, cameras={"primary": (32, 32)})
    export_lerobot(tmp_path / "a", tmp_path / "out", vcodec="h264", progress=False)
    info = json.loads((tmp_path / "out/meta/info.json").read_text())
    assert info["features"]["observation.images.primary"]["info"]["video.codec"] == "h264"
    frames = decode_video(
        tmp_path / "out" / V30_VIDEO_PATH.format(video_key="observation.images.primary", chunk_index=0, file_index=0)
    )
    assert len(frames) == 4
    assert np.abs(frames[0.0][16, 4].astype(int) - np.array(COLOURS[0])).max() < 16
    with pytest.raises(DatasetError, match="whole-number frame rate"):
        export_lerobot(tmp_path / "a", tmp_path / "o2", fps=7.5, progress=False)
    with pytest.raises(DatasetError, match="--vcodec"):
        export_lerobot(tmp_path / "a", tmp_path / "o3", vcodec="mjpeg", progress=False)
    write_episodes(tmp_path / "odd", episodes=1, steps=2, cameras={"primary": (33, 32)})
    with pytest.raises(DatasetError, match="even width"):
        export_lerobot(tmp_path / "odd", tmp_path / "o4", progress=False)
