"""Episodes written the way the earlier CRANE-X7 stack wrote them import correctly."""

import numpy as np
import simplejpeg

from crane_x7_vla import robot
from crane_x7_vla.episode import jpeg, list_episodes, load_episode, tfrecord
from crane_x7_vla.episode.legacy import import_legacy
from crane_x7_vla.episode.validate import validate_dataset


def write_legacy(root, steps=6):
    """The earlier stack: RGB arrays handed to an encoder that assumes BGR; no metadata."""
    ep = root / "episode_0000_20250101_120000"
    ep.mkdir(parents=True)
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :, 0] = 230  # red in RGB
    states = [robot.home_state() + 0.02 * t for t in range(steps)]
    with open(ep / "episode_data.tfrecord", "wb") as f:
        for t, q in enumerate(states):
            action = states[min(t + 1, steps - 1)]
            features = {
                "observation/proprio": np.asarray(q, np.float32),
                "observation/image_primary": simplejpeg.encode_jpeg(img, quality=90, colorspace="BGR"),
                "observation/timestep": [t],
                "action": np.asarray(action, np.float32),
                "task/language_instruction": b"pick up the red cube",
                "dataset_name": b"crane_x7",
            }
            f.write(tfrecord.frame(tfrecord.encode_example(features)))
    return states


def mean_rgb(data):
    return jpeg.decode(data).reshape(-1, 3).mean(0)


def test_import_with_and_without_swap(tmp_path):
    states = write_legacy(tmp_path / "legacy")
    kept = import_legacy(tmp_path / "legacy", tmp_path / "kept", progress=False)
    fixed = import_legacy(tmp_path / "legacy", tmp_path / "fixed", swap_rb=True, progress=False)
    for out in (tmp_path / "kept", tmp_path / "fixed"):
        assert validate_dataset(out) == (1, [])
    a = load_episode(kept[0])
    b = load_episode(fixed[0])
    np.testing.assert_allclose(a.proprio, np.array(states, np.float32))
    np.testing.assert_allclose(b.action, a.action)
    assert a.instruction == b.instruction == "pick up the red cube"
    assert a.meta.extra["red_blue_fixed"] is False and b.meta.extra["red_blue_fixed"] is True
    # Without the fix the recorded red scene decodes blue (the earlier stack's defect) ...
    r, _, bl = mean_rgb(a.images["primary"][0])
    assert bl > 200 and r < 40
    # ... and with --swap-rb it is red again.
    r, _, bl = mean_rgb(b.images["primary"][0])
    assert r > 200 and bl < 40


def test_legacy_episodes_are_listed_and_read_in_place(tmp_path):
    write_legacy(tmp_path)
    refs = list_episodes(tmp_path)
    assert len(refs) == 1 and refs[0].meta is None
    assert len(load_episode(refs[0].path)) == 6


def test_import_into_the_source_or_a_folder_inside_it_is_refused(tmp_path):
    import pytest

    from crane_x7_vla.episode.reader import DatasetError

    src = tmp_path / "old"
    write_legacy(src)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for dst in (src, src / "converted", src / "." / "a" / ".."):
        with pytest.raises(DatasetError, match="source folder"):
            import_legacy(src, dst, progress=False)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        import_legacy(src, tmp_path / "file", progress=False)
    assert len(import_legacy(src, tmp_path / "new", progress=False)) == 1
