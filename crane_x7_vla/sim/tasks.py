"""The tabletop task suite: seeded layouts, instructions and success checks.

A layout is drawn from a seed only, so the same seed always gives the same scene
(colours, positions, yaws, which object is the target) and episodes can be replayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crane_x7_vla.sim.model import COLOURS, CUBE_HALF, PLATE_HALF_HEIGHT, PLATE_RADIUS

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

REACH_DISTANCE = 0.04  # m, fingertip centre to target cube centre
PLACE_TOLERANCE = PLATE_RADIUS - 0.01  # m, cube centre to plate centre in the table plane
REST_SPEED = 0.05  # m/s, a cube moving slower than this is resting
GRASP_LIFT = 0.02  # m above its resting height: the cube is off the table, held


@dataclass
class Layout:
    """One drawn scene: per-object colours and planar poses plus the target choice."""

    cube_colours: list[str]
    cube_xy: np.ndarray  # (n_cubes, 2)
    cube_yaw: np.ndarray  # (n_cubes,)
    plate_colours: list[str] = field(default_factory=list)
    plate_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    target_cube: int = 0
    target_plate: int | None = None
    arm_offset: np.ndarray = field(default_factory=lambda: np.zeros(7))  # start-pose jitter


@dataclass(frozen=True)
class TaskSpec:
    """A task family: how many objects, where they may lie, the instruction template."""

    name: str
    template: str
    n_cubes: int
    n_plates: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    min_cube_gap: float
    description: str

    def instruction(self, layout: Layout) -> str:
        plate = layout.plate_colours[layout.target_plate] if layout.target_plate is not None else ""
        return self.template.format(cube=layout.cube_colours[layout.target_cube], plate=plate)

    def sample(self, rng: np.random.Generator) -> Layout:
        """Draw colours and non-overlapping positions inside the reachable region."""
        cube_colours = [str(c) for c in rng.choice(COLOUR_NAMES, size=self.n_cubes, replace=False)]
        plate_colours = [str(c) for c in rng.choice(COLOUR_NAMES, size=self.n_plates, replace=False)]
        placed: list[tuple[np.ndarray, float]] = []  # (xy, radius of the keep-out disc)

        def draw(radius: float) -> np.ndarray:
            for _ in range(1000):
                xy = np.array([rng.uniform(*self.x_range), rng.uniform(*self.y_range)])
                if all(np.linalg.norm(xy - p) >= radius + r for p, r in placed):
                    placed.append((xy, radius))
                    return xy
            raise RuntimeError(f"task {self.name!r}: could not place {self.n_cubes} cubes and "
                               f"{self.n_plates} plates without overlap; widen the region")

        plate_xy = np.array([draw(PLATE_RADIUS + 0.01) for _ in range(self.n_plates)]).reshape(-1, 2)
        cube_xy = np.array([draw(self.min_cube_gap / 2) for _ in range(self.n_cubes)])
        cube_yaw = rng.uniform(-math.pi / 6, math.pi / 6, size=self.n_cubes)
        return Layout(
            cube_colours=cube_colours,
            cube_xy=cube_xy,
            cube_yaw=cube_yaw,
            plate_colours=plate_colours,
            plate_xy=plate_xy,
            target_cube=int(rng.integers(self.n_cubes)),
            target_plate=int(rng.integers(self.n_plates)) if self.n_plates else None,
            arm_offset=rng.uniform(-0.03, 0.03, size=7),
        )

    def distance(self, env) -> float:
        """How far from success (m): reach, fingertip centre to the named cube's centre (success
        below REACH_DISTANCE); pick_place, the named cube's centre to the named plate's, in the
        table plane. Tells whether a failed episode ended near the goal or elsewhere."""
        cube = env.cube_position(env.layout.target_cube)
        if self.n_plates == 0:
            return float(np.linalg.norm(env.fingertip_centre() - cube))
        return float(np.linalg.norm(cube[:2] - env.layout.plate_xy[env.layout.target_plate]))

    def lifted(self, env) -> bool:
        """The named cube held by the fingers at least GRASP_LIFT above where it rests on the table."""
        i = env.layout.target_cube
        return bool(env.cube_position(i)[2] > CUBE_HALF + GRASP_LIFT and env.gripper_touches_cube(i))

    def success(self, env) -> bool:
        """The task's success check on the current simulator state."""
        if self.n_plates == 0:
            return self.distance(env) < REACH_DISTANCE
        cube = env.cube_position(env.layout.target_cube)
        resting_z = 2 * PLATE_HALF_HEIGHT + CUBE_HALF
        on_plate = self.distance(env) < PLACE_TOLERANCE
        resting = abs(cube[2] - resting_z) < 0.006 and env.cube_speed(env.layout.target_cube) < REST_SPEED
        return bool(on_plate and resting and not env.gripper_touches_cube(env.layout.target_cube))


TASKS: dict[str, TaskSpec] = {
    "reach": TaskSpec(
        name="reach",
        template="reach the {cube} cube",
        n_cubes=3,
        n_plates=0,
        x_range=(0.2, 0.34),
        y_range=(-0.14, 0.14),
        min_cube_gap=0.08,
        description="three cubes of different colours; move the fingertips to the named one "
                    f"(success: fingertip centre within {REACH_DISTANCE * 100:.0f} cm of its centre)",
    ),
    "pick_place": TaskSpec(
        name="pick_place",
        template="pick up the {cube} cube and place it on the {plate} plate",
        n_cubes=2,
        n_plates=2,
        x_range=(0.18, 0.36),
        y_range=(-0.18, 0.18),
        min_cube_gap=0.07,
        description="two cubes and two plates; carry the named cube onto the named plate and let go "
                    "(success: cube resting on the plate, gripper not touching it)",
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
