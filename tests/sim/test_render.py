"""Rendering: RGB channel order, image size, both cameras see the scene."""

import numpy as np
import pytest

from crane_x7_vla.sim import SimEnv
from crane_x7_vla.sim.ik import ArmIK
from crane_x7_vla.sim.model import COLOURS


def _patch(img, px, r=2):
    c, row = (int(round(v)) for v in px)
    return img[row - r:row + r + 1, c - r:c + r + 1].reshape(-1, 3).astype(float).mean(axis=0)


def _dominant(rgb) -> str:
    r, g, b = rgb
    if r > 1.5 * g and r > 1.5 * b:
        return "red"
    if g > 1.4 * r and g > 1.4 * b:
        return "green"
    if b > 1.5 * r and b > 1.3 * g:
        return "blue"
    if r > 1.5 * b and g > 1.5 * b:
        return "yellow"
    return "other"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_primary_camera_shows_cubes_in_their_colours(seed):
    env = SimEnv("reach", seed=seed, camera_size=(320, 240))
    img = env.render("primary")
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    for i, colour in enumerate(env.layout.cube_colours):
        px = env.project("primary", env.cube_position(i) + [0, 0, 0.013])  # the lit top face
        assert _dominant(_patch(img, px)) == colour, (colour, _patch(img, px))
    env.close()


def test_wrist_camera_sees_the_cube_below_in_colour():
    env = SimEnv("reach", seed=4, camera_size=(160, 120))
    target = env.cube_position(env.layout.target_cube)
    ik = ArmIK(env.model)
    q = ik.solve(target + [0, 0, 0.15], np.pi + np.arctan2(target[1], target[0]), env.joint_positions()[:7], 1.0).q
    env.set_arm_target(q)
    env.step(1.5)
    img = env.render("wrist")
    assert img.shape == (120, 160, 3)
    px = env.project("wrist", target + [0, 0, 0.015])
    assert 0 <= px[0] < 160 and 0 <= px[1] < 120
    assert _dominant(_patch(img, px)) == env.layout.cube_colours[env.layout.target_cube]
    big = env.render("wrist", 640, 480)
    assert big.shape == (480, 640, 3)
    env.close()


def test_colours_are_distinct():
    cols = np.array(list(COLOURS.values()))
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1) + np.eye(len(cols))
    assert d.min() > 0.5


def test_clear_error_when_mujoco_imported_without_egl():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "PYOPENGL_PLATFORM")}
    code = "import mujoco\nfrom crane_x7_vla.sim import SimEnv\nSimEnv('reach').render('primary')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "MUJOCO_GL=egl" in proc.stderr


def test_importing_sim_selects_egl():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "PYOPENGL_PLATFORM")}
    code = ("from crane_x7_vla.sim import SimEnv\nimport os\n"
            "img = SimEnv('reach', camera_size=(64, 48)).render('wrist')\nprint(os.environ['MUJOCO_GL'], img.shape)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "egl (48, 64, 3)" in proc.stdout
