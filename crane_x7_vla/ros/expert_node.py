"""scripted_expert: the simulated CRANE-X7 with its scripted demonstrator switched on.

The expert (crane_x7_vla.sim.ScriptedExpert) stands in for the human at the leader arm.
It plans from the scene's object poses and watches the follower, both of which live in
the simulator process, so it runs inside the crane_x7_sim node rather than beside it
(sharing the MuJoCo state across processes would only copy it). This entry point is
that node with `expert` defaulting to true:

    scripted_expert --ros-args -p task:=pick_place
    # same as: crane_x7_sim --ros-args -p expert:=true -p task:=pick_place

It publishes LEADER joint states on /leader/joint_states (parameter
leader_joint_states_topic) and its state ("waiting", "running", "done", "failed") on
~/expert_status; it commands nothing itself: teleop_relay turns the leader joint states
into follower commands exactly as it does for the real leader arm. Every other topic,
service and parameter is crane_x7_sim's (see crane_x7_vla.ros.sim_node).
"""

from __future__ import annotations

from crane_x7_vla.ros.node_main import run
from crane_x7_vla.ros.sim_node import SimNode


def main(argv=None) -> int:
    return run(lambda: SimNode(expert_default=True), argv, threads=4)


if __name__ == "__main__":
    raise SystemExit(main())
