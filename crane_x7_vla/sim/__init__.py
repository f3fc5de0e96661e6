"""The simulated CRANE-X7 (MuJoCo): scene, tasks and scripted expert.

Importing this package sets MUJOCO_GL=egl (headless rendering) unless already set.
"""

from crane_x7_vla.sim.env import SimEnv
from crane_x7_vla.sim.expert import ScriptedExpert, rollout
from crane_x7_vla.sim.tasks import TASKS, TaskSpec

__all__ = ["SimEnv", "ScriptedExpert", "TASKS", "TaskSpec", "rollout"]
