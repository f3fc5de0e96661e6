from dataclasses import replace

import pytest

jax = pytest.importorskip("jax")


@pytest.fixture(scope="session")
def tiny_cfg():
    from crane_x7_vla.backends.openpi.presets import TINY

    return replace(TINY, image_width=32, image_height=32, num_cameras=2, action_horizon=4, max_token_len=8)
