import json
import shutil

import numpy as np
import pytest

from crane_x7_vla.episode.synthetic import write_synthetic_dataset
from crane_x7_vla.policy.baselines import MeanTrajectoryPolicy


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy") / "data"
    write_synthetic_dataset(root, episodes=3, steps=15, fps=10.0)
    return root


@pytest.fixture(scope="session")
def mean_ckpt(dataset, tmp_path_factory):
    return MeanTrajectoryPolicy.from_dataset(dataset, horizon=5).save(tmp_path_factory.mktemp("ckpt") / "mean")


@pytest.fixture
def edit_ckpt(mean_ckpt, tmp_path):
    """A copy of the mean-trajectory checkpoint with its policy_config.json changed by fn(config)."""
    count = [0]

    def make(fn):
        count[0] += 1
        out = tmp_path / f"edited{count[0]}"
        shutil.copytree(mean_ckpt, out)
        config = json.loads((out / "policy_config.json").read_text())
        fn(config)
        (out / "policy_config.json").write_text(json.dumps(config))
        return out
    return make


def observation(state=None, t=None, cameras=("primary",)):
    obs = {"images": {c: np.full((96, 128, 3), 100, np.uint8) for c in cameras},
           "state": np.zeros(8) if state is None else state, "instruction": "reach the red cube"}
    if t is not None:
        obs["episode_time"] = t
    return obs
