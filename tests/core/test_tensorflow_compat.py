"""TensorFlow reads our files, and we read what TensorFlow writes (TF runs in a subprocess)."""

import subprocess
import sys
import textwrap

import numpy as np

from crane_x7_vla.episode import load_episode, tfrecord
from crane_x7_vla.episode.synthetic import write_synthetic_dataset


def run_tf(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_tensorflow_reads_our_episodes(tmp_path):
    paths = write_synthetic_dataset(tmp_path, episodes=1, steps=6)
    ep = load_episode(paths[0])
    out = run_tf(
        f"""
        import json, tensorflow as tf
        rows = []
        for raw in tf.data.TFRecordDataset(["{paths[0]}/episode_data.tfrecord"]):
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            img = tf.io.decode_jpeg(f["observation/image_primary"].bytes_list.value[0]).numpy()
            rows.append(dict(p=list(f["observation/proprio"].float_list.value),
                             a=list(f["action"].float_list.value),
                             t=list(f["observation/timestep"].int64_list.value),
                             s=list(f["observation/timestamp_ns"].int64_list.value),
                             i=f["task/language_instruction"].bytes_list.value[0].decode(),
                             red=int(((img[..., 0] > 180) & (img[..., 2] < 80)).sum()),
                             blue=int(((img[..., 2] > 180) & (img[..., 0] < 80)).sum())))
        print(json.dumps(rows))
        """
    )
    import json

    rows = json.loads(out.strip().splitlines()[-1])
    assert len(rows) == 6
    np.testing.assert_allclose(np.array([r["p"] for r in rows]), ep.proprio, rtol=0, atol=0)
    np.testing.assert_allclose(np.array([r["a"] for r in rows]), ep.action)
    assert [r["t"] for r in rows] == [[i] for i in range(6)]
    assert [r["s"][0] for r in rows] == ep.timestamp_ns.tolist()
    assert rows[0]["i"] == ep.instruction == "reach the red cube"
    # the red marker decodes red in TensorFlow too, and nothing turned blue
    assert rows[0]["red"] > 30 and rows[0]["blue"] == 0


def test_we_read_what_tensorflow_writes(tmp_path):
    path = tmp_path / "tf.tfrecord"
    run_tf(
        f"""
        import tensorflow as tf
        with tf.io.TFRecordWriter("{path}") as w:
            for i in range(3):
                ex = tf.train.Example(features=tf.train.Features(feature={{
                    "observation/proprio": tf.train.Feature(float_list=tf.train.FloatList(value=[i * 0.5] * 8)),
                    "observation/timestep": tf.train.Feature(int64_list=tf.train.Int64List(value=[i, -7])),
                    "task/language_instruction": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"pick"])),
                }}))
                w.write(ex.SerializeToString())
        """
    )
    steps = [tfrecord.decode_example(r) for r in tfrecord.iter_records(path)]
    assert len(steps) == 3
    np.testing.assert_array_equal(steps[2]["observation/proprio"], np.full(8, 1.0, np.float32))
    assert steps[1]["observation/timestep"].tolist() == [1, -7]
    assert steps[0]["task/language_instruction"] == [b"pick"]
