"""ROS domain ids: two runs on one machine never share one (their service calls would
reach each other's nodes: the evaluation's two parallel baselines once did)."""

import subprocess
import sys

from crane_x7_vla.ros.processes import domain_lease, pick_domain_id, release_domain_id

PICK_IN_CHILD = "from crane_x7_vla.ros.processes import pick_domain_id; print(pick_domain_id())"


def _pick_in_child() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PICK_IN_CHILD], capture_output=True, text=True, timeout=60)


def test_ids_held_here_are_refused_to_every_other_process():
    held = []
    try:
        while True:
            try:
                held.append(pick_domain_id())
            except RuntimeError as exc:
                assert "all ROS domain ids 1..200 are in use" in str(exc)
                break
        assert len(set(held)) == len(held) and held and all(1 <= d <= 200 for d in held)
        child = _pick_in_child()
        assert child.returncode != 0 and "in use" in child.stderr
        release_domain_id(held[0])
        child = _pick_in_child()
        assert child.returncode == 0, child.stderr
        assert int(child.stdout) == held[0]
    finally:
        for domain in held:
            release_domain_id(domain)


def _locked_by_someone(domain: int) -> bool:
    """Whether a child process finds the id's lock file taken."""
    code = ("import fcntl, os, sys; from crane_x7_vla.ros import processes as p; "
            f"fd = os.open(p._DOMAIN_LOCK_DIR / '{domain}.lock', os.O_RDWR)\n"
            "try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError: sys.exit(3)")
    return subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 3


def test_a_lease_is_given_back_at_the_end_of_the_block():
    with domain_lease() as first:
        with domain_lease() as second:
            assert first != second
            assert _locked_by_someone(first) and _locked_by_someone(second)
        assert _locked_by_someone(first) and not _locked_by_someone(second)
    assert not _locked_by_someone(first)
    release_domain_id(first)  # an id not held: nothing happens
