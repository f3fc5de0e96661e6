import subprocess
import sys
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.client import connect

from crane_x7_vla.policy.client import RemotePolicy, RemotePolicyError
from crane_x7_vla.policy.loader import load_policy
from crane_x7_vla.policy.server import PolicyServer

from .conftest import observation


@pytest.fixture
def server(mean_ckpt):
    srv = PolicyServer(load_policy(mean_ckpt), port=0, max_message_bytes=1_000_000).start()
    yield srv
    srv.stop()


def wire_obs(t=0.3):
    return {"observation/image": np.full((96, 128, 3), 7, np.uint8),
            "observation/state": np.zeros(8, np.float32), "prompt": "reach the red cube", "episode_time": t}


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
            msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"xx", b"dtype": "|u1",
                                                 b"shape": [96, 128, 3]}}),
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
    proc = subprocess.Popen([sys.executable, "-m", "crane_x7_vla.policy.serve_cli", str(mean_ckpt),
                             "--port", str(port), "--token", "tk"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    res = subprocess.run([sys.executable, "-m", "crane_x7_vla.policy.serve_cli", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "policy_config.json: missing" in res.stderr
