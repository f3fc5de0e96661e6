import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.client import connect

from crane_x7_vla import robot
from crane_x7_vla.policy import wire
from crane_x7_vla.policy.baselines import HoldPolicy
from crane_x7_vla.policy.client import RemotePolicy, RemotePolicyError
from crane_x7_vla.policy.loader import load_policy
from crane_x7_vla.cli.serve import TokenError, resolve_token
from crane_x7_vla.policy.server import PolicyServer

from .conftest import observation


@pytest.fixture
def server(mean_ckpt):
    srv = PolicyServer(load_policy(mean_ckpt), port=0, max_message_bytes=1_000_000).start()
    yield srv
    srv.stop()


def wire_obs(t=0.3):
    return {
        "observation/image": np.full((96, 128, 3), 7, np.uint8),
        "observation/state": np.zeros(8, np.float32),
        "prompt": "reach the red cube",
        "episode_time": t,
    }


def test_openpi_client_round_trip(server, mean_ckpt):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    meta = client.get_server_metadata()
    assert meta["server"] == "crane_x7_vla"
    assert meta["policy_config"]["cameras"] == ["primary"]
    reply = client.infer(wire_obs())
    local = load_policy(mean_ckpt).predict(observation(t=0.3))
    assert reply["actions"].shape == (5, 8)
    np.testing.assert_allclose(reply["actions"], local)
    assert reply["server_timing"]["infer_ms"] >= 0.0
    second = client.infer(wire_obs(0.0))
    assert "prev_total_ms" in second["server_timing"]
    assert server.calls == 2 and len(server.infer_ms) == 2


def test_remote_policy_matches_local(server, mean_ckpt):
    remote = RemotePolicy(server.url)
    assert remote.config["statistics_fingerprint"] == load_policy(mean_ckpt).config["statistics_fingerprint"]
    obs = observation(t=0.5)
    np.testing.assert_allclose(remote.predict(obs), load_policy(mean_ckpt).predict(obs))
    assert remote.last_timing["round_trip_ms"] > 0
    remote.close()


def test_malformed_messages_get_errors_and_the_server_keeps_serving(server):
    other = WebsocketClientPolicy("127.0.0.1", server.port)
    with connect(server.url, max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())  # metadata
        bad = [
            b"\xc1\xc1not msgpack",
            msgpack.packb([1, 2, 3]),
            msgpack_numpy.packb({"observation/state": np.zeros(8)}),  # no image
            msgpack_numpy.packb({**wire_obs(), "observation/state": np.zeros(5)}),
            msgpack_numpy.packb({**wire_obs(), "observation/image": np.zeros((4, 4), np.float32)}),
            msgpack.packb(
                {"observation/image": {b"__ndarray__": True, b"data": b"xx", b"dtype": "|u1", b"shape": [96, 128, 3]}}
            ),
            msgpack_numpy.packb({**wire_obs(), "observation/state": np.full(8, np.nan)}),
            "a text frame",
            b"\x00" * 1_200_000,  # above max_message_bytes
        ]
        for message in bad:
            ws.send(message)
            reply = ws.recv(timeout=5)
            assert isinstance(reply, str) and reply.startswith("error:"), reply
        # the same connection still works
        ws.send(msgpack_numpy.packb(wire_obs()))
        assert msgpack_numpy.unpackb(ws.recv(timeout=5))["actions"].shape == (5, 8)
    assert server.errors == len(bad)
    assert other.infer(wire_obs())["actions"].shape == (5, 8)
    with pytest.raises(RuntimeError, match="lacks camera"):
        other.infer({"observation/state": np.zeros(8)})


def test_token_is_required_when_set(mean_ckpt):
    srv = PolicyServer(load_policy(mean_ckpt), port=0, token="s3cret").start()
    try:
        with pytest.raises(RemotePolicyError, match="HTTP 401"):
            RemotePolicy(srv.url)
        with pytest.raises(RemotePolicyError, match="HTTP 401"):
            RemotePolicy(srv.url, token="wrong")
        with pytest.raises(Exception, match="401"):
            WebsocketClientPolicy("127.0.0.1", srv.port, api_key="wrong")
        client = WebsocketClientPolicy("127.0.0.1", srv.port, api_key="s3cret")
        assert client.infer(wire_obs())["actions"].shape == (5, 8)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        srv.stop()


def test_serve_command_binds_localhost_and_answers(mean_ckpt):
    port = 18000 + (int(time.time() * 1000) % 2000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crane_x7_vla.cli.serve", str(mean_ckpt), "--port", str(port), "--token", "tk"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 30
        client = None
        while client is None and time.time() < deadline:
            try:
                client = RemotePolicy(f"127.0.0.1:{port}", token="tk", open_timeout=2)
            except RemotePolicyError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        assert client is not None, "server did not come up"
        assert client.predict(observation(t=0.0)).shape == (5, 8)
        client.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"ws://127.0.0.1:{port}" in out and "inference" in out


def test_serve_command_refuses_a_bad_checkpoint(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "crane_x7_vla.cli.serve", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1 and "policy_config.json: missing" in res.stderr


class FirstCallWaits(HoldPolicy):
    """A hold policy (actions = the observed state) whose first call waits for ``gate``; it
    records the state of every call, in the order the calls ran."""

    def __init__(self, gate):
        super().__init__(horizon=2)
        self.gate = gate
        self.seen = []

    def predict(self, observation):
        self.seen.append(np.asarray(observation["state"], dtype=float).copy())
        if len(self.seen) == 1:
            assert self.gate.wait(120), "the test never opened the gate"
        return super().predict(observation)


def state(k):
    return robot.home_state() + 0.01 * k


def test_a_late_reply_is_never_taken_for_the_next_observation(caplog):
    gate = threading.Event()
    policy = FirstCallWaits(gate)
    srv = PolicyServer(policy, port=0).start()
    try:
        remote = RemotePolicy(srv.url)
        with pytest.raises(RemotePolicyError, match="did not answer within 0.5 s"):
            remote.predict(observation(state(1), t=0.1), timeout=0.5)  # the server holds it far longer
        gate.set()  # the late reply to state(1) is sent now
        chunk = remote.predict(observation(state(2), t=0.2), timeout=60)
        np.testing.assert_allclose(chunk, np.tile(state(2), (2, 1)))
        assert remote.last_observation_time == 0.2
        chunk = remote.predict(observation(state(3), t=0.3), timeout=60)
        np.testing.assert_allclose(chunk, np.tile(state(3), (2, 1)))
        assert remote.last_observation_time == 0.3
        remote.close()
    finally:
        gate.set()
        srv.stop()
    # the late reply went to a closed connection: one line, no traceback
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def test_replies_repeat_the_request_id_and_observation_time(server):
    with connect(server.url, max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())
        for rid, t in ((7, 0.4), (2**63 - 1, 0.0)):
            ws.send(msgpack_numpy.packb({**wire_obs(t), "request_id": rid}))
            reply = msgpack_numpy.unpackb(ws.recv(timeout=10))
            assert reply["request_id"] == rid and reply["episode_time"] == t
        for bad in (-1, 2**64 - 1, "seven", 1.5):
            ws.send(msgpack_numpy.packb({**wire_obs(), "request_id": bad}))
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and "'request_id' must be an integer" in reply


def test_requests_are_served_in_arrival_order_across_connections():
    gate = threading.Event()
    policy = FirstCallWaits(gate)
    srv = PolicyServer(policy, port=0).start()
    try:
        a = connect(srv.url, max_size=None)
        b = connect(srv.url, max_size=None)
        a.recv(), b.recv()
        for k in range(1, 5):  # client A sends 4 requests at once; the first holds the model
            a.send(wire.packb(wire.encode_observation(observation(state(k)), ["primary"])))
        wait_until(lambda: srv.pending == 1)
        b.send(wire.packb(wire.encode_observation(observation(state(10)), ["primary"])))
        wait_until(lambda: srv.pending == 2)  # B's request waits behind A's first
        gate.set()
        for _ in range(4):
            assert not isinstance(a.recv(timeout=60), str)
        assert not isinstance(b.recv(timeout=60), str)
        order = [int(round((s[0] - robot.home_state()[0]) / 0.01)) for s in policy.seen]
        assert order == [1, 10, 2, 3, 4]  # B waited for one inference of A, not for all of them
        a.close(), b.close()
    finally:
        gate.set()
        srv.stop()


def test_a_request_whose_client_left_is_skipped():
    gate = threading.Event()
    policy = FirstCallWaits(gate)
    srv = PolicyServer(policy, port=0).start()
    try:
        a = RemotePolicy(srv.url)
        b = RemotePolicy(srv.url)
        with pytest.raises(RemotePolicyError, match="did not answer"):
            a.predict(observation(state(1)), timeout=0.5)  # holds the model
        with pytest.raises(RemotePolicyError, match="did not answer"):
            b.predict(observation(state(2)), timeout=0.5)  # queued behind it; B gives up and closes
        gate.set()
        np.testing.assert_allclose(b.predict(observation(state(3)), timeout=60), np.tile(state(3), (2, 1)))
        assert [round(float(s[0] - robot.home_state()[0]) / 0.01) for s in policy.seen] == [1, 3]
        a.close(), b.close()
    finally:
        gate.set()
        srv.stop()


def wait_until(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met"
        time.sleep(0.01)


def test_an_over_long_prompt_is_refused_before_inference(mean_ckpt):
    srv = PolicyServer(load_policy(mean_ckpt), port=0, max_prompt_chars=100).start()
    try:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        with pytest.raises(
            RuntimeError,
            match=r"'prompt' holds 101 characters; this server accepts at most 100 "
            r"\(its max_prompt_chars, `crane-x7-vla serve --max-prompt-chars`\)",
        ):
            client.infer({**wire_obs(), "prompt": "x" * 101})
        assert srv.calls == 0
        assert client.infer({**wire_obs(), "prompt": "y" * 100})["actions"].shape == (5, 8)
        assert client.get_server_metadata()["max_prompt_chars"] == 100
    finally:
        srv.stop()


def test_the_decoder_builds_nothing_larger_than_the_message(server):
    image = {b"__ndarray__": True, b"data": bytes(96 * 128 * 3), b"dtype": "|u1", b"shape": [96, 128, 3]}
    base = {"observation/image": image, "observation/state": [0.0] * 8}
    bad = {
        # a 40-byte scalar that would become a 10**9-byte void, or a 4-billion-character prompt
        "void scalar": (
            {**base, "prompt": {b"__npgeneric__": True, b"dtype": "|V1", b"data": 10**9}},
            "dtype |V1 is not accepted",
        ),
        "number as text": (
            {**base, "prompt": {b"__npgeneric__": True, b"dtype": "<U1", b"data": 10**9}},
            "'data' must be a str",
        ),
        "record dtype": (
            {**base, "prompt": {b"__ndarray__": True, b"data": b"", b"dtype": "u1,u1", b"shape": [0]}},
            "not accepted",
        ),
        "long dtype": (
            {**base, "observation/state": {b"__ndarray__": True, b"data": b"", b"dtype": "u1," * 10000, b"shape": [0]}},
            "must be a NumPy type string",
        ),
        "count mismatch": (
            {
                **base,
                "observation/state": {
                    b"__ndarray__": True,
                    b"data": bytes(8),
                    b"dtype": "<f8",
                    b"shape": [2**32, 2**32],
                },
            },
            "needs 147573952589676412928",
        ),
        "negative shape": (
            {
                **base,
                "observation/state": {b"__ndarray__": True, b"data": bytes(64), b"dtype": "<f8", b"shape": [-1, -8]},
            },
            "sizes >= 0",
        ),
        "many keys": ({**base, **{f"k{i}": i for i in range(100)}}, "at most 64 keys per map"),
        "long list": ({**base, "observation/state": [0.0] * 100_000}, "64 items per list"),
        "nested lists": ({**base, "x": [[[0] * 64] * 64] * 64}, "more than 1024 list items and map entries"),
        "prompt map": ({**base, "prompt": {"a": 1}}, "'prompt': must be text, got dict"),
        "bad unicode": (
            {**base, "prompt": {b"__ndarray__": True, b"data": b"\xff" * 4, b"dtype": "<U1", b"shape": []}},
            "'prompt': text that is not valid Unicode",
        ),
    }
    with connect(server.url, max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())
        for name, (msg, expected) in bad.items():
            ws.send(msgpack.packb(msg))
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("error: bad message") and expected in reply, (
                name,
                reply,
            )
        ws.send(msgpack.packb({**base, "prompt": {b"__npgeneric__": True, b"dtype": "<U5", b"data": "reach"}}))
        assert msgpack_numpy.unpackb(ws.recv(timeout=10))["actions"].shape == (5, 8)
    assert server.calls == 1


def test_error_replies_and_logs_repeat_little_of_the_input(server, caplog):
    caplog.set_level(logging.INFO, logger="crane_x7_vla.serve")
    long_text = "line one\nline two" + "A" * 100_000
    messages = [
        msgpack.packb(
            {
                **wire_obs(0.0),
                "observation/image": None,
                "observation/state": {b"__ndarray__": True, b"data": b"", b"dtype": long_text, b"shape": [0]},
            }
        ),
        msgpack_numpy.packb({**wire_obs(), "request_id": long_text}),
        msgpack_numpy.packb({**wire_obs(), "episode_time": long_text}),
    ]
    with connect(server.url, max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())
        for message in messages:
            ws.send(message)
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("error:") and len(reply) < 800, reply[:1000]
            assert "line one\\nline two" in reply or "must be a number" in reply, reply
    lines = [r.getMessage() for r in caplog.records if r.name == "crane_x7_vla.serve"]
    assert lines and all(len(line) < 800 and "\n" not in line for line in lines), lines


def test_a_dropped_connection_is_one_log_line(server, caplog):
    caplog.set_level(logging.INFO)
    ws = connect(server.url, max_size=None)
    ws.recv()
    ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
    ws.socket.close()
    wait_until(lambda: any("dropped the connection" in r.getMessage() for r in caplog.records))
    assert server.connections == 0
    assert not [r for r in caplog.records if r.exc_info]


def test_too_many_connections_from_one_address_are_refused(mean_ckpt):
    srv = PolicyServer(load_policy(mean_ckpt), port=0, max_connections_per_address=2).start()
    try:
        first, second = RemotePolicy(srv.url), RemotePolicy(srv.url)
        with pytest.raises(RemotePolicyError, match="127.0.0.1 has 2 connections open"):
            RemotePolicy(srv.url)
        first.close()
        wait_until(lambda: srv.connections == 1)
        third = RemotePolicy(srv.url)
        assert third.predict(observation(t=0.0)).shape == (5, 8)
        second.close(), third.close()
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="max_prompt_chars must be a whole number >= 1"):
        PolicyServer(HoldPolicy(), max_prompt_chars=0)


def test_health_check_needs_no_token(mean_ckpt):
    srv = PolicyServer(load_policy(mean_ckpt), port=0, token="s3cret").start()
    try:
        for path in ("/healthz", "/healthz/", "/healthz?probe=1"):
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as resp:
                assert resp.status == 200 and resp.read() == b"OK\n"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthzz", timeout=5)
    finally:
        srv.stop()


def test_token_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file\n")
    path.chmod(0o600)
    assert resolve_token(None, None, {}) is None
    assert resolve_token("argv", None, {"CRANE_X7_VLA_TOKEN": "env"}) == "argv"
    assert resolve_token(None, str(path), {"CRANE_X7_VLA_TOKEN": "env"}) == "from-file"
    assert resolve_token(None, None, {"CRANE_X7_VLA_TOKEN_FILE": str(path), "CRANE_X7_VLA_TOKEN": "env"}) == "from-file"
    assert resolve_token(None, None, {"CRANE_X7_VLA_TOKEN": "env"}) == "env"
    with pytest.raises(TokenError, match="not both"):
        resolve_token("argv", str(path), {})
    with pytest.raises(TokenError, match=f"cannot read the token file {tmp_path / 'nope'} \\(--token-file\\)"):
        resolve_token(None, str(tmp_path / "nope"), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="is empty"):
        resolve_token(None, None, {"CRANE_X7_VLA_TOKEN_FILE": str(tmp_path / "empty")})
    help_text = subprocess.run(
        [sys.executable, "-m", "crane_x7_vla.cli", "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for name in ("--token-file", "CRANE_X7_VLA_TOKEN_FILE", "CRANE_X7_VLA_TOKEN", "--max-prompt-chars"):
        assert name in help_text


def test_after_a_lost_connection_the_client_reconnects_only_to_the_same_policy(mean_ckpt):
    first = PolicyServer(load_policy(mean_ckpt), port=0).start()
    remote = RemotePolicy(first.url)
    port = first.port
    first.stop()
    with pytest.raises(RemotePolicyError, match="the next call reconnects"):
        remote.predict(observation(t=0.0), timeout=10)
    same = PolicyServer(load_policy(mean_ckpt), port=port).start()
    try:
        assert remote.predict(observation(t=0.3), timeout=10).shape == (5, 8)
        assert remote.last_observation_time == 0.3
    finally:
        same.stop()
    with pytest.raises(RemotePolicyError, match="the next call reconnects"):
        remote.predict(observation(t=0.0), timeout=10)
    other = PolicyServer(HoldPolicy(horizon=5), port=port).start()
    try:
        with pytest.raises(RemotePolicyError, match="now serves another policy"):
            remote.predict(observation(t=0.0), timeout=10)
    finally:
        other.stop()
        remote.close()
