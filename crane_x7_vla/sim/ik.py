"""Damped-least-squares inverse kinematics on the MuJoCo model of the arm.

Solves for the 7 arm joints that put the fingertip centre (midpoint of the two pads,
at a given gripper opening) at a point with the gripper pointing straight down and
its fingers opening along a given yaw. The seventh degree of freedom is used to stay
close to a rest posture (null-space pull).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crane_x7_vla import robot

_N = robot.NUM_ARM_JOINTS


@dataclass
class IKResult:
    q: np.ndarray  # (7,) arm joints, within limits
    position_error: float  # m
    rotation_error: float  # rad
    iterations: int

    @property
    def ok(self) -> bool:
        return self.position_error < 2e-3 and self.rotation_error < 0.02


def down_rotation(yaw: float) -> np.ndarray:
    """Gripper orientation pointing down (its z to world -z) with its x axis at `yaw`."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


class ArmIK:
    """IK solver owning a private MjData, so solving never disturbs the simulation."""

    def __init__(self, model):
        import mujoco

        self._mj = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        joints = [model.joint(j) for j in robot.ARM_JOINTS]
        self._qadr = np.array([j.qposadr[0] for j in joints])
        self._dadr = np.array([j.dofadr[0] for j in joints])
        self._fingers = np.array([model.joint(j).qposadr[0] for j in (robot.GRIPPER_JOINT, robot.GRIPPER_MIMIC_JOINT)])
        self._hand = model.body("link7").id
        self._tips = [model.site("finger_a_tip").id, model.site("finger_b_tip").id]
        self._lo = robot.LOWER_LIMITS[:_N]
        self._hi = robot.UPPER_LIMITS[:_N]
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q7, gripper: float) -> tuple[np.ndarray, np.ndarray]:
        """(fingertip centre, gripper rotation matrix) at arm joints q7 and a gripper opening."""
        d = self.data
        d.qpos[self._qadr] = q7
        d.qpos[self._fingers] = gripper
        self._mj.mj_kinematics(self.model, d)
        return d.site_xpos[self._tips].mean(axis=0).copy(), d.xmat[self._hand].reshape(3, 3).copy()

    def solve(self, target_pos, yaw: float, q_seed, gripper: float, q_rest=None, *,
              iterations: int = 200, damping: float = 0.02, rest_gain: float = 0.1) -> IKResult:
        target_pos = np.asarray(target_pos, dtype=float)
        r_target = down_rotation(yaw)
        q = np.clip(np.asarray(q_seed, dtype=float).copy(), self._lo, self._hi)
        q_rest = q if q_rest is None else np.asarray(q_rest, dtype=float)
        quat_t, quat_c, quat_e = np.zeros(4), np.zeros(4), np.zeros(4)
        self._mj.mju_mat2Quat(quat_t, r_target.ravel())
        err_p = err_r = math.inf
        it = 0
        for it in range(1, iterations + 1):
            pos, rot = self.forward(q, gripper)
            e_p = target_pos - pos
            self._mj.mju_mat2Quat(quat_c, rot.ravel())
            neg = np.zeros(4)
            self._mj.mju_negQuat(neg, quat_c)
            self._mj.mju_mulQuat(quat_e, quat_t, neg)
            e_r = np.zeros(3)
            self._mj.mju_quat2Vel(e_r, quat_e, 1.0)
            err_p, err_r = float(np.linalg.norm(e_p)), float(np.linalg.norm(e_r))
            if err_p < 5e-4 and err_r < 5e-3:
                break
            self._mj.mj_comPos(self.model, self.data)  # the Jacobian needs cdof
            self._mj.mj_jac(self.model, self.data, self._jacp, self._jacr, pos, self._hand)
            jac = np.vstack([self._jacp[:, self._dadr], self._jacr[:, self._dadr]])
            err = np.concatenate([e_p, 0.5 * e_r])
            jac_w = jac.copy()
            jac_w[3:] *= 0.5
            jjt = jac_w @ jac_w.T + damping ** 2 * np.eye(6)
            inv = np.linalg.solve(jjt, np.eye(6))
            dq = jac_w.T @ inv @ err
            null = np.eye(_N) - jac_w.T @ inv @ jac_w
            dq += null @ (rest_gain * (q_rest - q))
            scale = max(1.0, np.abs(dq).max() / 0.3)
            q = np.clip(q + dq / scale, self._lo, self._hi)
        return IKResult(q=q, position_error=err_p, rotation_error=err_r, iterations=it)
