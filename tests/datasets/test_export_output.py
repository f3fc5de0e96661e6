"""Where an export is written: complete or not at all, and never over anything but an earlier export."""

import json

import pytest

from crane_x7_vla.episode import list_episodes, schema
from crane_x7_vla.episode.export_common import EXPORT_MARKER
from crane_x7_vla.episode.lerobot import export_lerobot
from crane_x7_vla.episode.reader import DatasetError
from crane_x7_vla.episode.rlds import export_rlds
from crane_x7_vla.episode.tfrecord import RecordError

EXPORTERS = {"rlds": export_rlds, "lerobot": export_lerobot}


def export(fmt, root, out, **kw):
    return EXPORTERS[fmt](root, out, progress=False, **kw)


def snapshot(folder):
    """Every file under `folder` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def damage_last_episode(root):
    """Flip bytes in the middle of the last episode's records: reading it fails after the
    other episodes were written."""
    record = list_episodes(root)[-1].record_path
    data = bytearray(record.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    record.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_an_export_carries_its_marker_and_leaves_nothing_beside_it(fmt, episodes_dir, tmp_path):
    out = tmp_path / "exports" / fmt
    summary = export(fmt, episodes_dir, out)
    assert summary["out"] == str(out)
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["format"] == fmt and marker["source"] == str(episodes_dir.resolve())
    assert [p.name for p in out.parent.iterdir()] == [fmt]


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_overwrite_replaces_an_earlier_export_only(fmt, episodes_dir, tmp_path):
    unrelated = tmp_path / "thesis"
    unrelated.mkdir()
    (unrelated / "chapter1.tex").write_text("months of work\n")
    (unrelated / "figures").mkdir()
    (unrelated / "figures" / "plot.png").write_bytes(b"\x89PNG not really")
    before = snapshot(unrelated)
    with pytest.raises(DatasetError, match=f"--out {unrelated} holds files that no .* wrote"):
        export(fmt, episodes_dir, unrelated, overwrite=True)
    assert snapshot(unrelated) == before

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    with pytest.raises(DatasetError, match="is a file"):
        export(fmt, episodes_dir, a_file, overwrite=True)
    assert a_file.read_text() == "keep me\n"

    out = tmp_path / "out"
    export(fmt, episodes_dir, out)
    (out / "left_by_the_earlier_export").write_text("x")
    with pytest.raises(DatasetError, match="--overwrite"):
        export(fmt, episodes_dir, out)
    assert (out / "left_by_the_earlier_export").exists()
    export(fmt, episodes_dir, out, overwrite=True)
    assert not (out / "left_by_the_earlier_export").exists() and (out / EXPORT_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes", "notes.txt", "out", "thesis"]


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_a_failed_export_leaves_nothing_and_keeps_the_earlier_one(fmt, episodes_dir, tmp_path):
    out = tmp_path / "out"
    export(fmt, episodes_dir, out)
    earlier = snapshot(out)
    damage_last_episode(episodes_dir)
    with pytest.raises(RecordError, match=list_episodes(episodes_dir)[-1].name):
        export(fmt, episodes_dir, out, overwrite=True)
    assert snapshot(out) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes", "out"]

    fresh = tmp_path / "new" / "deeper" / fmt
    with pytest.raises(RecordError):
        export(fmt, episodes_dir, fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes", "out"]


def test_an_empty_folder_is_taken_and_the_source_is_refused(episodes_dir, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    export("rlds", episodes_dir, out)
    assert (out / "crane_x7" / "1.0.0" / schema.STATS_FILE).is_file() and (out / EXPORT_MARKER).is_file()
    with pytest.raises(DatasetError, match="source episodes"):
        export("lerobot", episodes_dir, tmp_path, overwrite=True)
    assert len(list_episodes(episodes_dir)) == 3
