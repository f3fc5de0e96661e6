import os
import tempfile
from dataclasses import replace

import pytest

# Compiled programs are cached on disk, so the runs of one test session (and the
# data-parallel subprocess) compile each program once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "crane_x7_vla_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

jax = pytest.importorskip("jax")


@pytest.fixture(scope="session")
def tiny_cfg():
    from crane_x7_vla.backends.openpi.presets import TINY

    return replace(TINY, image_width=32, image_height=32, num_cameras=2, action_horizon=4, max_token_len=8)


def make_episodes(root, n_episodes=4, steps=16, size=(40, 40), seed=0, fps=10.0):
    """Episodes whose motion depends on the image: the arm moves toward a goal whose
    colour the camera shows, the gripper closes half-way. Statistics are written."""
    import numpy as np

    from crane_x7_vla import robot
    from crane_x7_vla.episode.stats import write_statistics
    from crane_x7_vla.episode.writer import EpisodeWriter

    rng = np.random.default_rng(seed)
    for e in range(n_episodes):
        goal = rng.uniform(-0.4, 0.4, 7)
        colour = np.clip((goal[:3] + 0.4) / 0.8 * 255, 0, 255).astype(np.uint8)
        w = EpisodeWriter(root, fps=fps, instruction=["pick up the red cube", "push the blue block"][e % 2],
                          cameras={"primary": size})
        q = robot.home_state()
        for t in range(steps):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[:] = colour
            img[: size[1] // 2, : size[0] // 2] = 255 - colour
            w.add_step(q, {"primary": img})
            q = q.copy()
            q[:7] += 0.15 * (robot.HOME_POSE + goal - q[:7])
            q[7] = robot.GRIPPER_CLOSED if t >= steps // 2 else robot.GRIPPER_OPEN
        w.close(success=True)
    write_statistics(root)
    return root


@pytest.fixture(scope="session")
def episodes_dir(tmp_path_factory):
    return make_episodes(tmp_path_factory.mktemp("episodes"))


def tiny_train_config(data_root, output_dir, **overrides):
    from crane_x7_vla.training.config import TrainConfig

    settings = dict(
        backend="openpi", data_root=str(data_root), output_dir=str(output_dir), model="tiny",
        image_size="32x32", batch_size=8, max_steps=6, learning_rate=1e-3, warmup_ratio=0.0,
        save_steps=3, logging_steps=1, eval_samples=8, action_horizon=4, device="cpu", num_workers=1,
        val_ratio=0.25, lora_rank=4, lora_alpha=8, seed=3,
    )
    settings.update(overrides)
    return TrainConfig.from_dict(settings)
