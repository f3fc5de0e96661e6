"""Pointing questions about rendered scenes of a simulated task: the data of the pretraining
stage that both backends share (`crane-x7-vla pretrain`).

Each rendered picture of the scene camera yields one question per visible cube and plate,
"point to the {colour} {object}", answered by where the object's centre is in the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crane_x7_vla.episode import jpeg
from crane_x7_vla.errors import ConfigError
from crane_x7_vla.preprocess import ImageSpec, prepare_image

#: Rendered scenes start at this seed: far from the demonstrations (0..) and from the
#: held-out evaluation seeds (100000..).
PRETRAIN_FIRST_SEED = 500_000
CAMERA = "primary"


def question(colour: str, kind: str) -> str:
    """The instruction of a pointing question (it goes into the prompt that actions use)."""
    return f"point to the {colour} {kind}"


def lead_in_question(colour: str, kind: str) -> str:
    """The same question as a whole prompt of its own that ends with the colour, so the
    answer is predicted right after the word that names the object."""
    return f"point to the {kind} {colour}"


@dataclass
class Scenes:
    """Rendered pictures at the model's size and one pointing question per visible object."""

    images: np.ndarray  # uint8 (N, H, W, 3), JPEG round trip like the logger's
    scene: np.ndarray  # (Q,) picture of each question
    text: list[str]  # (Q,) question
    lead_in: list[str]  # (Q,) the same question ending with the colour (lead_in_question)
    where: np.ndarray  # (Q, 2) object centre (column, row) in [-1, 1] of the picture

    def questions(self, lead_in: bool) -> list[str]:
        """The questions in the form the answer stage asks them."""
        return self.lead_in if lead_in else self.text


def render_scenes(task: str, n_scenes: int, first_seed: int, spec: ImageSpec, rng: np.random.Generator,
                  camera_size=(320, 240), arm_pose_noise: float = 0.6, jpeg_quality: int = 90) -> Scenes:
    """n scenes of `task` from the scene camera: the cubes and plates of each become questions
    (objects outside the picture are skipped)."""
    from crane_x7_vla.sim import SimEnv
    from crane_x7_vla.sim.goal_scenes import reset_scene

    env = SimEnv(task=task, seed=first_seed, camera_size=camera_size, cameras=(CAMERA,))
    w, h = camera_size
    images, scene, text, lead_in, where = [], [], [], [], []
    try:
        for k in range(n_scenes):
            reset_scene(env, first_seed + k, rng, arm_pose_noise)
            picture = jpeg.encode(env.render(CAMERA), quality=jpeg_quality)
            images.append(prepare_image(picture, spec, train=True, rng=rng))
            lay = env.layout
            objects = [(c, "cube", env.cube_position(i)) for i, c in enumerate(lay.cube_colours)]
            objects += [(c, "plate", (*xy, 0.0)) for c, xy in zip(lay.plate_colours, lay.plate_xy)]
            for colour, kind, point in objects:
                u, v = env.project(CAMERA, point)
                if 0 <= u < w and 0 <= v < h:
                    scene.append(k)
                    text.append(question(colour, kind))
                    lead_in.append(lead_in_question(colour, kind))
                    where.append((2 * u / w - 1, 2 * v / h - 1))
    finally:
        env.close()
    return Scenes(np.stack(images), np.array(scene), text, lead_in, np.array(where, dtype=np.float32))


def check_stage_settings(task: str, **counts: tuple[int, int]) -> None:
    """ConfigError naming the flag when `task` is not a simulated task or a count
    (name=(value, least)) is below its least value."""
    from crane_x7_vla.sim.tasks import TASKS

    if task not in TASKS:
        raise ConfigError(f"--task {task!r} is not a simulated task (tasks: {', '.join(sorted(TASKS))})")
    for name, (value, least) in counts.items():
        if value < least:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {least} (got {value})")
