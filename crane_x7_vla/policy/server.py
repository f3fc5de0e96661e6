"""A policy server speaking openpi's websocket policy protocol.

Per connection: the server sends its metadata (a msgpack map) first, then answers every
binary msgpack observation (see wire.py for keys) with ``{"actions": (H, 8), "server_timing":
{"infer_ms", "decode_ms", "prev_total_ms"}}``, plus the observation's ``request_id`` and
``episode_time`` when it had them. A message it cannot use gets a text frame starting with
``error:`` (openpi-client raises it as RuntimeError) and the connection stays open; other
clients are never affected. Error texts repeat at most a few hundred characters of what the
client sent; a client that drops its connection is logged in one line.

Limits, so that one client cannot stall the others:

* a message above ``max_message_bytes`` gets an error (above twice that the websocket layer
  cuts the connection, close code 1009); decoding builds nothing larger than the message
  (wire.py);
* a prompt above ``max_prompt_chars`` characters gets an error naming the limit, before any
  inference: the model's time grows with the prompt's length;
* pictures of cameras the policy does not use are not passed to it;
* inference runs in one worker thread, one call at a time, in the order requests arrived,
  and each connection has at most one request waiting (its next message is read after its
  reply): a request waits for at most one inference per other open connection. A request
  whose client has left before its turn is skipped;
* at most ``max_connections`` connections, ``max_connections_per_address`` of them from one
  address; more are closed at once with code 1013 (try again later) and the reason.

With a token, clients must send ``Authorization: Api-Key <token>`` (what openpi-client's
``api_key`` sends) or ``Authorization: Bearer <token>``; others get HTTP 401.
``GET /healthz`` (or ``/healthz/``) answers 200 without a token. The event loop only decodes
and sends, so it keeps answering pings, health checks and other connections during inference.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import http
import logging
import threading
import time

import numpy as np

from crane_x7_vla.policy import wire

log = logging.getLogger("crane_x7_vla.serve")
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_PROMPT_CHARS = 512
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 4
ERROR_CHARS = 500  # longest text after "error: <kind>: " in an error reply
TIMINGS_KEPT = 10_000  # inference times kept in .infer_ms
TRY_AGAIN_LATER = 1013  # websocket close code


class _ClientGone(Exception):
    """The client closed its connection before its request's turn came."""


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


class PolicyServer:
    def __init__(self, policy, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS):
        self.policy = policy
        self.host = host
        self.port = int(port)
        self.token = token or None
        self.max_message_bytes = _positive_int("max_message_bytes", max_message_bytes)
        self.max_prompt_chars = _positive_int("max_prompt_chars", max_prompt_chars)
        self.max_connections = _positive_int("max_connections", max_connections)
        self.max_connections_per_address = _positive_int("max_connections_per_address", max_connections_per_address)
        config = getattr(policy, "config", {}) or {}
        self.cameras = list(config.get("cameras", []))
        self.state_dim = int((config.get("action_space") or {}).get("dim", 8))
        # One worker thread: its queue serves the requests in the order they arrived.
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-inference")
        self._per_address: collections.Counter = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.calls = 0
        self.errors = 0
        self.pending = 0  # requests handed to the worker and not yet answered
        self.connections = 0
        self.infer_ms: collections.deque = collections.deque(maxlen=TIMINGS_KEPT)

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
        meta["max_prompt_chars"] = self.max_prompt_chars
        meta["request_ids"] = True  # replies repeat the request's request_id and episode_time
        return meta

    def _infer(self, obs: dict, websocket=None) -> tuple[np.ndarray, float]:
        """One policy call, in the worker thread."""
        from websockets.protocol import State

        if websocket is not None and websocket.state is not State.OPEN:
            raise _ClientGone()
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
        if request.path.split("?", 1)[0].rstrip("/") == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if not self._authorized(request.headers.get("Authorization")):
            log.warning("refused a client without the right token from %s", connection.remote_address)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                      "a valid token is required (Authorization: Api-Key <token>)\n")
        return None

    async def _handler(self, websocket):
        from websockets.exceptions import ConnectionClosed

        peer = websocket.remote_address
        address = peer[0] if peer else "?"
        if self.connections >= self.max_connections:
            why = f"the server has its {self.max_connections} connections (max_connections)"
        elif self._per_address[address] >= self.max_connections_per_address:
            why = f"{address} has {self.max_connections_per_address} connections open (max_connections_per_address)"
        else:
            why = None
        if why is not None:
            log.warning("refused a connection from %s: %s", peer, why)
            await websocket.close(TRY_AGAIN_LATER, why[:120])
            return
        self.connections += 1
        self._per_address[address] += 1
        log.info("client connected: %s", peer)
        try:
            await self._serve_client(websocket, peer)
            log.info("client disconnected: %s", peer)
        except ConnectionClosed as exc:
            log.info("client %s dropped the connection (%s)", peer, wire.clip(exc, 120))
        finally:
            self.connections -= 1
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

    async def _serve_client(self, websocket, peer) -> None:
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
                msg = wire.unpackb(message, limited=True)
                rid = wire.request_id(msg)
                obs = wire.decode_observation(msg, self.cameras, self.state_dim, self.max_prompt_chars)
                decode_ms = (time.perf_counter() - t_start) * 1e3
                self.pending += 1
                try:
                    actions, infer_ms = await loop.run_in_executor(self._worker, self._infer, obs, websocket)
                finally:
                    self.pending -= 1
            except _ClientGone:
                log.info("skipped a request from %s: the client left before its turn", peer)
                return
            except Exception as exc:  # one bad message must not end the server
                self.errors += 1
                kind = "bad message" if isinstance(exc, wire.WireError) else "inference failed"
                log.warning("%s from %s: %s", kind, peer, wire.clip(exc))
                await websocket.send(f"error: {kind}: {wire.clip(exc, ERROR_CHARS)}")
                continue
            timing = {"infer_ms": infer_ms, "decode_ms": decode_ms}
            if prev_total_ms is not None:
                timing["prev_total_ms"] = prev_total_ms
            self.calls += 1
            self.infer_ms.append(infer_ms)
            reply = {"actions": actions, "server_timing": timing}
            if rid is not None:
                reply["request_id"] = rid
            if "episode_time" in obs:
                reply["episode_time"] = obs["episode_time"]
            await websocket.send(wire.packb(reply))
            prev_total_ms = (time.perf_counter() - t_start) * 1e3
            log.info("inference %.1f ms (decode %.1f ms) for %s", infer_ms, decode_ms, peer)

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
        try:
            asyncio.run(self._serve())
        finally:
            self._worker.shutdown(wait=False, cancel_futures=True)

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
        self._worker.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"
