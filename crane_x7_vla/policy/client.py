"""RemotePolicy: a policy served over openpi's websocket protocol, with the local predict interface.

Works against `crane-x7-vla serve` and against an openpi policy server. Our server sends the
checkpoint's policy_config in its metadata (cameras, control rate, horizon, joint order),
which is checked like a local checkpoint; for a server that sends none, pass ``cameras``
and ``control_rate_hz``.
"""

from __future__ import annotations

import time

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.policy import wire


class RemotePolicyError(RuntimeError):
    pass


def _url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    return url


class RemotePolicy:
    def __init__(self, url: str, token: str | None = None, *, cameras=None, control_rate_hz: float | None = None,
                 open_timeout: float = 10.0, expected_joint_names=robot.JOINT_NAMES,
                 expected_fingerprint: str | None = None):
        self.url = _url(url)
        self.token = token or None
        self.open_timeout = open_timeout
        self._ws = None
        self.server_metadata = self._connect()
        config = self.server_metadata.get("policy_config")
        if isinstance(config, dict) and config:
            from crane_x7_vla.policy.loader import validate_config

            validate_config(config, f"policy server {self.url}", expected_joint_names=expected_joint_names,
                            expected_fingerprint=expected_fingerprint)
            self.config = dict(config)
        else:
            self.config = {"cameras": list(cameras or ["primary"]), "joint_names": list(expected_joint_names),
                           "action_space": {"dim": len(expected_joint_names), "horizon": None},
                           "control_rate_hz": float(control_rate_hz or 10.0), "backend": "remote"}
        if cameras is not None:
            self.config["cameras"] = list(cameras)
        if control_rate_hz is not None:
            self.config["control_rate_hz"] = float(control_rate_hz)
        self.cameras = list(self.config["cameras"])
        self.last_timing: dict = {}

    @property
    def metadata(self) -> dict:
        return self.server_metadata

    def _connect(self) -> dict:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
        try:
            self._ws = connect(self.url, compression=None, max_size=None, additional_headers=headers,
                               open_timeout=self.open_timeout, legacy=True)
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = " (wrong or missing token)" if status == 401 else ""
            raise RemotePolicyError(f"policy server {self.url} refused the connection: HTTP {status}{hint}") from None
        except (OSError, TimeoutError) as exc:
            raise RemotePolicyError(f"cannot reach the policy server at {self.url}: {exc}") from None
        first = self._ws.recv(timeout=self.open_timeout)
        if isinstance(first, str):
            raise RemotePolicyError(f"policy server {self.url} sent no metadata: {first}")
        meta = wire.unpackb(first)
        return meta if isinstance(meta, dict) else {}

    def reset(self) -> None:
        pass

    def predict(self, observation: dict, timeout: float = 30.0) -> np.ndarray:
        msg = wire.encode_observation(observation, self.cameras)
        t0 = time.perf_counter()
        try:
            self._ws.send(wire.packb(msg))
            reply = self._ws.recv(timeout=timeout)
        except TimeoutError:
            raise RemotePolicyError(f"policy server {self.url} did not answer within {timeout} s") from None
        except Exception as exc:
            # The connection dropped: reconnect once for the next call.
            try:
                self.server_metadata = self._connect()
            except RemotePolicyError:
                pass
            raise RemotePolicyError(f"connection to the policy server {self.url} failed: {exc}") from None
        if isinstance(reply, str):
            raise RemotePolicyError(f"policy server {self.url}: {reply}")
        data = wire.unpackb(reply)
        if not isinstance(data, dict) or "actions" not in data:
            raise RemotePolicyError(f"policy server {self.url} answered without 'actions'")
        actions = np.asarray(data["actions"], dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None]
        dim = len(self.config["joint_names"])
        if actions.ndim != 2 or actions.shape[1] < dim:
            raise RemotePolicyError(f"policy server {self.url} sent actions of shape {actions.shape}; need (H, >={dim})")
        self.last_timing = dict(data.get("server_timing") or {})
        self.last_timing["round_trip_ms"] = (time.perf_counter() - t0) * 1e3
        return actions[:, :dim].copy()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
