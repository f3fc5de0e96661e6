"""A policy server speaking openpi's websocket policy protocol.

Per connection: the server sends its metadata (a msgpack map) first, then answers every
binary msgpack observation (see wire.py for keys) with ``{"actions": (H, 8), "server_timing":
{"infer_ms", "decode_ms", "prev_total_ms"}}``. A message it cannot use gets a text frame
starting with ``error:`` (openpi-client raises it as RuntimeError) and the connection stays
open; other clients are never affected. Messages above ``max_message_bytes`` get the same
error; those above twice that are cut off by the websocket layer (close code 1009).

With a token, clients must send ``Authorization: Api-Key <token>`` (what openpi-client's
``api_key`` sends) or ``Authorization: Bearer <token>``; others get HTTP 401.
``GET /healthz`` answers 200 without a token. Inference runs in a worker thread, one call
at a time, so the event loop keeps answering pings and other connections.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import threading
import time

import numpy as np

from crane_x7_vla.policy import wire

log = logging.getLogger("crane_x7_vla.serve")
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class PolicyServer:
    def __init__(self, policy, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.policy = policy
        self.host = host
        self.port = int(port)
        self.token = token or None
        self.max_message_bytes = int(max_message_bytes)
        config = getattr(policy, "config", {}) or {}
        self.cameras = list(config.get("cameras", []))
        self.state_dim = int((config.get("action_space") or {}).get("dim", 8))
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.calls = 0
        self.errors = 0
        self.infer_ms: list[float] = []

    # --- metadata and one inference --------------------------------------------------
    def metadata(self) -> dict:
        meta = dict(getattr(self.policy, "metadata", {}) or {})
        meta.setdefault("policy_config", getattr(self.policy, "config", {}))
        meta["server"] = "crane_x7_vla"
        meta["observation_keys"] = {
            **{cam: key for cam, key in wire.camera_keys(self.cameras).items()},
            "state": "observation/state", "instruction": "prompt",
        }
        meta["max_message_bytes"] = self.max_message_bytes
        return meta

    def _infer(self, obs: dict) -> tuple[np.ndarray, float]:
        with self._lock:
            t0 = time.perf_counter()
            actions = self.policy.predict(obs)
            infer_ms = (time.perf_counter() - t0) * 1e3
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.state_dim:
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, expected (H, {self.state_dim})")
        return actions, infer_ms

    # --- websocket handlers --------------------------------------------------------------
    def _authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("api-key", "bearer"):
            return False
        return hmac.compare_digest(value.strip().encode(), self.token.encode())

    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if not self._authorized(request.headers.get("Authorization")):
            log.warning("refused a client without the right token from %s", connection.remote_address)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                      "a valid token is required (Authorization: Api-Key <token>)\n")
        return None

    async def _handler(self, websocket):
        peer = websocket.remote_address
        log.info("client connected: %s", peer)
        loop = asyncio.get_running_loop()
        await websocket.send(wire.packb(self.metadata()))
        prev_total_ms = None
        async for message in websocket:
            t_start = time.perf_counter()
            try:
                if isinstance(message, str):
                    raise wire.WireError("expected a binary msgpack message, got text")
                if len(message) > self.max_message_bytes:
                    raise wire.WireError(f"message of {len(message)} bytes is larger than the "
                                         f"limit of {self.max_message_bytes} bytes")
                msg = wire.unpackb(message)
                obs = wire.decode_observation(msg, self.cameras, self.state_dim)
                decode_ms = (time.perf_counter() - t_start) * 1e3
                actions, infer_ms = await loop.run_in_executor(None, self._infer, obs)
            except Exception as exc:  # one bad message must not end the server
                self.errors += 1
                kind = "bad message" if isinstance(exc, wire.WireError) else "inference failed"
                log.warning("%s from %s: %s", kind, peer, exc)
                await websocket.send(f"error: {kind}: {exc}")
                continue
            timing = {"infer_ms": infer_ms, "decode_ms": decode_ms}
            if prev_total_ms is not None:
                timing["prev_total_ms"] = prev_total_ms
            self.calls += 1
            self.infer_ms.append(infer_ms)
            await websocket.send(wire.packb({"actions": actions, "server_timing": timing}))
            prev_total_ms = (time.perf_counter() - t_start) * 1e3
            log.info("inference %.1f ms (decode %.1f ms) for %s", infer_ms, decode_ms, peer)
        log.info("client disconnected: %s", peer)

    # --- running ---------------------------------------------------------------------------
    async def _serve(self, stop: asyncio.Future | None = None):
        from websockets.asyncio.server import serve

        async with serve(self._handler, self.host, self.port, compression=None,
                         max_size=2 * self.max_message_bytes, process_request=self._process_request) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await (stop if stop is not None else server.serve_forever())

    def serve_forever(self) -> None:
        asyncio.run(self._serve())

    def start(self, timeout: float = 10.0) -> "PolicyServer":
        """Serve in a background thread (port 0 picks a free port; see .port)."""
        def run():
            self._loop = asyncio.new_event_loop()
            self._stop = self._loop.create_future()
            try:
                self._loop.run_until_complete(self._serve(self._stop))
            finally:
                self._ready.set()
                self._loop.close()

        self._thread = threading.Thread(target=run, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._server is None:
            raise RuntimeError(f"policy server did not start on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"
