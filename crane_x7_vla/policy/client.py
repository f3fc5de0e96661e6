"""RemotePolicy: a policy served over openpi's websocket protocol, with the local predict interface.

Works against `crane-x7-vla serve` and against an openpi policy server. Our server sends the
checkpoint's policy_config in its metadata (cameras, control rate, horizon, joint order),
which is checked like a local checkpoint; for a server that sends none, pass ``cameras``
and ``control_rate_hz``.

Every reply answers the observation sent just before it: when a call fails or times out,
the connection is closed (a late reply dies with it) and the next call opens a new one, so
a late answer to an older observation is never returned as the answer to a newer one. Our
server also repeats each request's ``request_id`` and ``episode_time``; a reply whose
numbers differ is refused. ``last_observation_time`` is the ``episode_time`` the server
says the last reply answers (None when the server does not say).
"""

from __future__ import annotations

import time

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.checkpoint_contract import validate_config
from crane_x7_vla.policy import wire

CLOSE_TIMEOUT = 2.0  # seconds to wait for the server to acknowledge a close


class RemotePolicyError(RuntimeError):
    pass


def _url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    return url


class RemotePolicy:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        cameras=None,
        control_rate_hz: float | None = None,
        open_timeout: float = 10.0,
        expected_joint_names=robot.JOINT_NAMES,
        expected_fingerprint: str | None = None,
    ):
        self.url = _url(url)
        self.token = token or None
        self.open_timeout = open_timeout
        self._ws = None
        self._request_id = 0
        self.server_metadata = self._connect()
        config = self.server_metadata.get("policy_config")
        self._server_config = config if isinstance(config, dict) else None
        if isinstance(config, dict) and config:
            validate_config(
                config,
                f"policy server {self.url}",
                expected_joint_names=expected_joint_names,
                expected_fingerprint=expected_fingerprint,
            )
            self.config = dict(config)
        else:
            self.config = {
                "cameras": list(cameras or ["primary"]),
                "joint_names": list(expected_joint_names),
                "action_space": {"dim": len(expected_joint_names), "horizon": None},
                "control_rate_hz": float(control_rate_hz or 10.0),
                "backend": "remote",
            }
        if cameras is not None:
            self.config["cameras"] = list(cameras)
        if control_rate_hz is not None:
            self.config["control_rate_hz"] = float(control_rate_hz)
        self.cameras = list(self.config["cameras"])
        self.last_timing: dict = {}
        self.last_observation_time: float | None = None

    @property
    def metadata(self) -> dict:
        return self.server_metadata

    @property
    def _server_echoes(self) -> bool:
        """Whether the server repeats request ids (ours does; openpi's servers do not)."""
        return self.server_metadata.get("server") == "crane_x7_vla" and bool(self.server_metadata.get("request_ids"))

    def _connect(self) -> dict:
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
        try:
            self._ws = connect(
                self.url,
                compression=None,
                max_size=None,
                additional_headers=headers,
                open_timeout=self.open_timeout,
                close_timeout=CLOSE_TIMEOUT,
                legacy=True,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = " (wrong or missing token)" if status == 401 else ""
            raise RemotePolicyError(f"policy server {self.url} refused the connection: HTTP {status}{hint}") from None
        except (OSError, TimeoutError) as exc:
            raise RemotePolicyError(f"cannot reach the policy server at {self.url}: {exc}") from None
        try:
            first = self._ws.recv(timeout=self.open_timeout)
        except ConnectionClosed as exc:
            self._drop()
            reason = exc.rcvd.reason if exc.rcvd is not None and exc.rcvd.reason else str(exc)
            raise RemotePolicyError(f"policy server {self.url} closed the connection: {reason}") from None
        except TimeoutError:
            self._drop()
            raise RemotePolicyError(f"policy server {self.url} sent no metadata within {self.open_timeout} s") from None
        if isinstance(first, str):
            self._drop()
            raise RemotePolicyError(f"policy server {self.url} sent no metadata: {wire.clip(first)}")
        meta = wire.unpackb(first)
        return meta if isinstance(meta, dict) else {}

    def _reconnect(self) -> None:
        meta = self._connect()
        config = meta.get("policy_config")
        if self._server_config is not None and config != self._server_config:
            self._drop()
            before = self._server_config.get("statistics_fingerprint")
            after = config.get("statistics_fingerprint") if isinstance(config, dict) else None
            raise RemotePolicyError(
                f"policy server {self.url} now serves another policy (statistics fingerprint {before} before, "
                f"{after} now); make a new RemotePolicy to use it"
            )
        self.server_metadata = meta

    def _drop(self) -> None:
        """Close the connection without reading what is still on it."""
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - the connection is being discarded
                pass

    def reset(self) -> None:
        pass

    def predict(self, observation: dict, timeout: float = 30.0) -> np.ndarray:
        msg = wire.encode_observation(observation, self.cameras)
        t0 = time.perf_counter()
        self.last_observation_time = None
        if self._ws is None:
            self._reconnect()
        self._request_id += 1
        rid = self._request_id
        if self._server_echoes:
            msg["request_id"] = rid
        try:
            self._ws.send(wire.packb(msg))
            reply = self._ws.recv(timeout=timeout)
        except TimeoutError:
            self._drop()  # its late reply must not be read as the answer to the next observation
            raise RemotePolicyError(
                f"policy server {self.url} did not answer within {timeout} s (the next call reconnects)"
            ) from None
        except Exception as exc:
            self._drop()
            raise RemotePolicyError(
                f"connection to the policy server {self.url} failed: {exc} (the next call reconnects)"
            ) from None
        if isinstance(reply, str):
            raise RemotePolicyError(f"policy server {self.url}: {wire.clip(reply, 600)}")
        try:
            data = wire.unpackb(reply)
        except wire.WireError as exc:
            raise RemotePolicyError(f"policy server {self.url} sent a reply that cannot be read: {exc}") from None
        if not isinstance(data, dict) or "actions" not in data:
            raise RemotePolicyError(f"policy server {self.url} answered without 'actions'")
        if self._server_echoes:
            answered = (data.get("request_id"), data.get("episode_time"))
            if answered != (rid, msg.get("episode_time")):
                self._drop()
                raise RemotePolicyError(
                    f"policy server {self.url} answered request {answered[0]} (episode_time {answered[1]}) while "
                    f"this client waited for request {rid} (episode_time {msg.get('episode_time')}); reply dropped"
                )
            self.last_observation_time = msg.get("episode_time")
        actions = np.asarray(data["actions"], dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None]
        dim = len(self.config["joint_names"])
        if actions.ndim != 2 or actions.shape[1] < dim:
            raise RemotePolicyError(
                f"policy server {self.url} sent actions of shape {actions.shape}; need (H, >={dim})"
            )
        self.last_timing = dict(data.get("server_timing") or {})
        self.last_timing["round_trip_ms"] = (time.perf_counter() - t0) * 1e3
        return actions[:, :dim].copy()

    def close(self) -> None:
        self._drop()
