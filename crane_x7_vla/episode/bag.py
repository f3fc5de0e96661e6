"""Import ROS 2 bags (rosbag2: MCAP or sqlite3) into episodes, without a ROS install.

Reads ``sensor_msgs/JointState`` from one topic and ``sensor_msgs/Image`` or
``sensor_msgs/CompressedImage`` from one topic per camera (via the `rosbags`
package), pairs them by nearest timestamp and writes episodes with EpisodeWriter.

* Steps: one per tick of ``rate`` Hz, or (without a rate) one per image of the
  first camera. A tick keeps the joint state and the image of every camera that
  are nearest to it in time, if each is within ``tolerance`` seconds; otherwise
  the tick is dropped (counted as a dropped step).
* Episodes: a new episode starts where consecutive kept steps are more than
  ``split_gap`` seconds apart, or when an episode reaches ``max_steps``.
  Episodes shorter than ``min_steps`` are skipped.
* Time: the message header stamp (``time_source="header"``); messages whose stamp
  is zero, or ``time_source="receive"``, use the time the bag recorded them.
* Images: rgb8, bgr8, rgba8, bgra8 and mono8 Images become RGB (bgr is converted,
  never passed through); JPEG CompressedImages are kept as they are (a JPEG decodes
  to RGB), PNG ones are decoded and converted.
* Episode names and start_time: when the bag recorded the episode's first step (not
  when it was imported); the metadata's extra keeps the bag's identity (first and last
  message time, message count).
* A bag whose episodes are already in the output folder is skipped (nothing written).
* JointState messages may carry a subset of the joints (e.g. the gripper apart
  from the arm): the latest value of each joint is merged, and a state exists once
  all 8 joints are known within the tolerance.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.messages import clip
from crane_x7_vla.episode import jpeg
from crane_x7_vla.episode.reader import DatasetError
from crane_x7_vla.episode.schema import CameraInfo
from crane_x7_vla.episode.writer import EpisodeWriter

JOINT_STATE = "sensor_msgs/msg/JointState"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
IMPORT_SOURCE = "rosbag2 import"  # EpisodeMeta.source of the episodes written here
RAW_ENCODINGS = {"rgb8": (3, False), "bgr8": (3, True), "rgba8": (4, False), "bgra8": (4, True), "mono8": (1, False)}


@dataclass
class BagImportOptions:
    instruction: str
    joint_topic: str = robot.JOINT_STATES_TOPIC
    image_topics: dict[str, str] = field(default_factory=lambda: {"primary": robot.DEFAULT_IMAGE_TOPIC})
    rate: float | None = None  # Hz; None: one step per image of the first camera
    tolerance: float | None = None  # s; default half a step period
    split_gap: float = 1.0  # s
    max_steps: int | None = None
    min_steps: int = 2
    time_source: str = "header"  # or "receive"
    task: str = ""

    def check(self) -> None:
        if not self.instruction or not self.instruction.strip():
            raise DatasetError("an instruction is needed for the imported episodes (--instruction)")
        if not self.image_topics:
            raise DatasetError("at least one camera topic is needed (--image-topic NAME=TOPIC)")
        if self.rate is not None and not self.rate > 0:
            raise DatasetError(f"--rate must be positive, got {self.rate}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise DatasetError(f"--tolerance must be positive, got {self.tolerance}")
        if not self.split_gap > 0:
            raise DatasetError(f"--split-gap must be positive, got {self.split_gap}")
        if self.max_steps is not None and self.max_steps < 1:
            raise DatasetError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.time_source not in ("header", "receive"):
            raise DatasetError(f"--time-source must be 'header' or 'receive', got {self.time_source!r}")


def parse_image_topic(text: str) -> tuple[str, str]:
    """'wrist=/wrist/image_raw' -> ('wrist', '/wrist/image_raw')."""
    name, sep, topic = text.partition("=")
    if not sep or not name or not topic.startswith("/"):
        raise DatasetError(f"--image-topic {clip(text)!r}: expected NAME=/topic, e.g. primary=/camera/color/image_raw")
    if not name.replace("_", "").isalnum():
        raise DatasetError(
            f"--image-topic {clip(text)!r}: camera name {clip(name)!r} may hold letters, digits and _ only"
        )
    return name, topic


# ---------------------------------------------------------------- messages


def cdr_header_stamp(rawdata) -> int:
    """header.stamp (ns) of a serialized message that starts with std_msgs/Header."""
    little = rawdata[1] & 1
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", rawdata, 4)
    return sec * 1_000_000_000 + nanosec


def message_time(rawdata, received_ns: int, time_source: str) -> int:
    if time_source == "header":
        stamp = cdr_header_stamp(rawdata)
        if stamp > 0:
            return stamp
    return int(received_ns)


def image_to_rgb_or_jpeg(msg, msgtype: str, *, where: str) -> np.ndarray | bytes:
    """RGB uint8 (H, W, 3) from an Image, or the JPEG bytes of a CompressedImage."""
    if msgtype == COMPRESSED_IMAGE:
        fmt = msg.format.lower()
        data = bytes(msg.data)
        if "jpeg" in fmt or "jpg" in fmt or data[:2] == b"\xff\xd8":
            try:
                jpeg.size_of(data)
            except Exception as exc:  # noqa: BLE001 - a corrupt JPEG from the bag
                raise DatasetError(f"{where}: CompressedImage is not a readable JPEG ({exc})") from exc
            return data
        if "png" in fmt:
            import cv2

            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if decoded is None:
                raise DatasetError(f"{where}: CompressedImage PNG could not be decoded")
            return np.ascontiguousarray(decoded[:, :, ::-1])  # OpenCV decodes to BGR
        raise DatasetError(f"{where}: CompressedImage format {msg.format!r} is not supported (jpeg or png)")
    encoding = msg.encoding.lower()
    if encoding not in RAW_ENCODINGS:
        raise DatasetError(f"{where}: image encoding {msg.encoding!r} is not supported ({', '.join(RAW_ENCODINGS)})")
    channels, bgr = RAW_ENCODINGS[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = np.asarray(msg.data, dtype=np.uint8)
    if step < w * channels or buf.size < h * step:
        raise DatasetError(f"{where}: image of {w}x{h} {encoding} has step {step} and {buf.size} bytes")
    pixels = buf[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    rgb = pixels[:, :, 2::-1] if bgr else pixels[:, :, :3]
    return np.ascontiguousarray(rgb)


# ---------------------------------------------------------------- pairing


@dataclass
class Streams:
    joint_times: np.ndarray  # (N,) int64 ns, sorted
    joint_states: np.ndarray  # (N, 8)
    joint_received: np.ndarray  # (N,) int64 ns: when the bag recorded each of those joint states
    image_times: dict[str, np.ndarray]  # camera -> (M,) int64 ns, in bag order
    image_order: dict[str, np.ndarray]  # camera -> message indices sorted by time


def nearest(times: np.ndarray, t: int) -> int:
    i = bisect_left(times, t)
    if i == 0:
        return 0
    if i == len(times):
        return len(times) - 1
    return i if times[i] - t < t - times[i - 1] else i - 1


@dataclass
class Step:
    time: int
    joint: int  # index into joint arrays
    images: dict[str, int]  # camera -> image message index (per topic, bag order)


def pair_steps(
    streams: Streams, cameras: list[str], *, rate: float | None, tolerance_ns: int
) -> tuple[list[Step], int]:
    """Kept steps (in time order) and the number of dropped ticks."""
    sorted_times = {c: streams.image_times[c][streams.image_order[c]] for c in cameras}
    if rate is not None:
        start = min([streams.joint_times[0]] + [sorted_times[c][0] for c in cameras])
        end = max([streams.joint_times[-1]] + [sorted_times[c][-1] for c in cameras])
        period = 1e9 / rate
        ticks = [int(start + k * period) for k in range(int((end - start) // period) + 1)] if end >= start else []
    else:
        ticks = [int(t) for t in sorted_times[cameras[0]]]
    steps, dropped = [], 0
    for t in ticks:
        j = nearest(streams.joint_times, t)
        if abs(int(streams.joint_times[j]) - t) > tolerance_ns:
            dropped += 1
            continue
        images = {}
        for cam in cameras:
            k = nearest(sorted_times[cam], t)
            if abs(int(sorted_times[cam][k]) - t) > tolerance_ns:
                break
            images[cam] = int(streams.image_order[cam][k])
        if len(images) != len(cameras):
            dropped += 1
            continue
        steps.append(Step(time=t, joint=j, images=images))
    return steps, dropped


def split_episodes(steps: list[Step], *, split_gap_ns: int, max_steps: int | None) -> list[list[Step]]:
    episodes: list[list[Step]] = []
    for step in steps:
        if (
            not episodes
            or step.time - episodes[-1][-1].time > split_gap_ns
            or (max_steps is not None and len(episodes[-1]) >= max_steps)
        ):
            episodes.append([])
        episodes[-1].append(step)
    return episodes


# ---------------------------------------------------------------- reading


def _open(bag: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not bag.exists():
        raise DatasetError(f"{bag}: no such bag (a rosbag2 folder, .mcap or .db3 file)")
    try:
        reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several error types for unreadable bags
        raise DatasetError(f"{bag}: cannot be read as a rosbag2 recording (MCAP or sqlite3): {exc}") from exc
    return reader


def _connections(reader, bag: Path, options: BagImportOptions):
    available = {c.topic: c.msgtype for c in reader.connections}
    listing = ", ".join(f"{t} ({m})" for t, m in sorted(available.items())) or "none"

    def pick(topic: str, types: tuple[str, ...], what: str):
        if topic not in available:
            raise DatasetError(f"{bag}: {what} topic {topic} is not in the bag; topics: {listing}")
        if available[topic] not in types:
            raise DatasetError(f"{bag}: {what} topic {topic} carries {available[topic]}, expected {' or '.join(types)}")
        return [c for c in reader.connections if c.topic == topic]

    joints = pick(options.joint_topic, (JOINT_STATE,), "joint state")
    images = {cam: pick(topic, IMAGE_TYPES, f"camera '{cam}'") for cam, topic in options.image_topics.items()}
    return joints, images


def read_streams(
    reader, joint_conns, image_conns, options: BagImportOptions, tolerance_ns: int | None, progress
) -> Streams:
    """Pass 1: every joint state (merged into full states) and every image's time."""
    topic_of = {c.id: ("joint", None) for c in joint_conns}
    for cam, conns in image_conns.items():
        topic_of.update({c.id: ("image", cam) for c in conns})
    latest: dict[str, tuple[float, int]] = {}
    seen_names: set[str] = set()
    jt, js, jr = [], [], []
    itimes: dict[str, list[int]] = {cam: [] for cam in image_conns}
    conns = [c for cs in image_conns.values() for c in cs] + list(joint_conns)
    for conn, received, raw in progress(reader.messages(connections=conns)):
        kind, cam = topic_of[conn.id]
        t = message_time(raw, received, options.time_source)
        if kind == "image":
            itimes[cam].append(t)
            continue
        msg = reader.deserialize(raw, conn.msgtype)
        names = list(msg.name)
        seen_names.update(names)
        for name, pos in zip(names, np.asarray(msg.position, dtype=np.float64)):
            latest[name] = (float(pos), t)
        if all(j in latest for j in robot.JOINT_NAMES):
            ages = [t - latest[j][1] for j in robot.JOINT_NAMES]
            if tolerance_ns is None or max(ages) <= tolerance_ns:
                js.append([latest[j][0] for j in robot.JOINT_NAMES])
                jt.append(t)
                jr.append(int(received))
    if not jt:
        missing = [j for j in robot.JOINT_NAMES if j not in seen_names]
        detail = (
            f"missing joints {', '.join(missing)}" if missing else "joints never within the tolerance of each other"
        )
        raise DatasetError(
            f"topic {options.joint_topic}: no complete CRANE-X7 joint state ({detail}; names seen: "
            f"{', '.join(sorted(seen_names)) or 'none'})"
        )
    for cam, times in itimes.items():
        if not times:
            raise DatasetError(f"camera '{cam}' ({options.image_topics[cam]}): the topic holds no messages")
    order = np.argsort(np.asarray(jt), kind="stable")
    joint_times = np.asarray(jt, dtype=np.int64)[order]
    # Messages with the same stamp (arm and gripper apart): the last one holds all updates.
    last_of_stamp = np.append(joint_times[1:] != joint_times[:-1], True)
    image_times = {cam: np.asarray(t, dtype=np.int64) for cam, t in itimes.items()}
    return Streams(
        joint_times=joint_times[last_of_stamp],
        joint_states=np.asarray(js, dtype=np.float64)[order][last_of_stamp],
        joint_received=np.asarray(jr, dtype=np.int64)[order][last_of_stamp],
        image_times=image_times,
        image_order={cam: np.argsort(t, kind="stable") for cam, t in image_times.items()},
    )


def _median_rate(times: np.ndarray) -> float:
    diffs = np.diff(np.sort(times))
    diffs = diffs[diffs > 0]
    if not len(diffs):
        raise DatasetError("the camera topic has fewer than two distinct image times: pass --rate")
    return 1e9 / float(np.median(diffs))


def _nominal_rate(measured: float) -> float:
    whole = round(measured)
    return float(whole) if whole >= 1 and abs(measured - whole) <= 0.03 * whole else round(measured, 3)


# ---------------------------------------------------------------- import


def import_bag(
    bag: str | os.PathLike, out: str | os.PathLike, options: BagImportOptions, *, progress: bool = True
) -> dict:
    """Convert one rosbag2 recording into episodes under `out`; returns a summary."""
    from tqdm import tqdm

    options.check()
    bag = Path(bag)
    cameras = list(options.image_topics)
    reader = _open(bag)
    try:
        identity = bag_identity(reader)
        done = already_imported(out, bag, identity)
        if done:
            return {"bag": str(bag), "out": str(out), "already_imported": [str(p) for p in done], "episodes": []}
        joint_conns, image_conns = _connections(reader, bag, options)
        total_msgs = sum(c.msgcount for cs in [joint_conns, *image_conns.values()] for c in cs)

        def bar(desc):
            return lambda it: tqdm(it, total=total_msgs, desc=desc, unit="msg", disable=not progress, leave=False)

        pre_tol = None if options.tolerance is None and options.rate is None else _tolerance_ns(options, None)
        streams = read_streams(reader, joint_conns, image_conns, options, pre_tol, bar("read bag"))
        rate = options.rate or _median_rate(streams.image_times[cameras[0]])
        tolerance_ns = _tolerance_ns(options, rate)
        steps, dropped = pair_steps(streams, cameras, rate=options.rate, tolerance_ns=tolerance_ns)
        episodes = split_episodes(steps, split_gap_ns=int(options.split_gap * 1e9), max_steps=options.max_steps)
        short = [e for e in episodes if len(e) < options.min_steps]
        episodes = [e for e in episodes if len(e) >= options.min_steps]
        if not episodes:
            raise DatasetError(
                f"{bag}: no episode of at least {options.min_steps} steps: {len(steps)} steps paired, {dropped} ticks "
                f"had no joint state or image within {tolerance_ns / 1e6:.1f} ms (try --tolerance or --rate)"
            )
        fps = float(options.rate) if options.rate else _nominal_rate(rate)
        written = _write_episodes(
            reader,
            bag,
            out,
            episodes,
            streams,
            joint_conns,
            image_conns,
            options,
            fps,
            bar("write episodes"),
            identity,
        )
    finally:
        reader.close()
    return {
        "bag": str(bag),
        "out": str(out),
        "episodes": [str(p) for p in written],
        "steps": int(sum(len(e) for e in episodes)),
        "fps": fps,
        "tolerance_ms": tolerance_ns / 1e6,
        "dropped_ticks": int(dropped),
        "skipped_short_episodes": len(short),
        "joint_states": int(len(streams.joint_times)),
        "images": {cam: int(len(t)) for cam, t in streams.image_times.items()},
    }


def bag_identity(reader) -> dict:
    """What tells one recording from another: its first and last message times and its
    message count (the same whether the bag is read from its folder or its file, or moved)."""
    return {
        "start_ns": int(reader.start_time),
        "end_ns": int(reader.end_time),
        "messages": int(reader.message_count),
    }


def already_imported(out, bag: Path, identity: dict) -> list[Path]:
    """Episodes under `out` imported from this recording (earlier imports without the
    recording's identity are matched by the bag's path)."""
    from crane_x7_vla.episode.reader import list_episodes

    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for ref in list_episodes(out, include_discarded=True, strict=False):
        if ref.meta is None:
            continue
        extra = ref.meta.extra
        if "bag" in extra:
            same = extra["bag"] == identity
        else:
            same = ref.meta.source == IMPORT_SOURCE and extra.get("imported_from") == str(bag.resolve())
        if same:
            found.append(ref.path)
    return found


def _tolerance_ns(options: BagImportOptions, rate: float | None) -> int:
    if options.tolerance is not None:
        return int(options.tolerance * 1e9)
    return int(0.5e9 / (options.rate or rate))


def _write_episodes(
    reader, bag, out, episodes, streams: Streams, joint_conns, image_conns, options, fps, progress, identity: dict
) -> list[Path]:
    """Pass 2: decode the chosen images and write the steps, episode by episode, in order."""
    wanted: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (camera, msg index) -> [(episode, step)]
    for e, steps in enumerate(episodes):
        for s, step in enumerate(steps):
            for cam, k in step.images.items():
                wanted.setdefault((cam, k), []).append((e, s))
    cam_of = {c.id: cam for cam, conns in image_conns.items() for c in conns}
    counters = {cam: 0 for cam in image_conns}
    pending: dict[tuple[int, int], dict] = {}
    cursor = [0, 0]  # next (episode, step) to write
    writers: dict[int, EpisodeWriter] = {}
    written: list[Path] = []
    sizes: dict[str, tuple[int, int]] = {}

    def flush() -> None:
        while cursor[0] < len(episodes):
            e, s = cursor
            images = pending.get((e, s))
            if images is None or len(images) < len(image_conns):
                return
            del pending[(e, s)]
            step = episodes[e][s]
            if e not in writers:
                writers[e] = _new_writer(out, bag, options, fps, images, sizes, e, episodes[e], streams, identity)
            writers[e].add_step(
                streams.joint_states[step.joint],
                {cam: img for cam, (img, _) in images.items()},
                timestamp_ns=int(streams.joint_times[step.joint]),
                image_timestamps_ns={cam: t for cam, (_, t) in images.items()},
            )
            if s == len(episodes[e]) - 1:
                written.append(_close(writers.pop(e), episodes[e], fps))
                cursor[0], cursor[1] = e + 1, 0
            else:
                cursor[1] = s + 1

    # The same connections as pass 1, so each topic's messages come in the same order.
    conns = [c for cs in image_conns.values() for c in cs] + list(joint_conns)
    try:
        for conn, received, raw in progress(reader.messages(connections=conns)):
            cam = cam_of.get(conn.id)
            if cam is None:
                continue
            k = counters[cam]
            counters[cam] += 1
            targets = wanted.get((cam, k))
            if not targets:
                continue
            t = message_time(raw, received, options.time_source)
            where = f"{bag}: {options.image_topics[cam]} message {k}"
            image = image_to_rgb_or_jpeg(reader.deserialize(raw, conn.msgtype), conn.msgtype, where=where)
            size = jpeg.size_of(image) if isinstance(image, bytes) else (image.shape[1], image.shape[0])
            if sizes.setdefault(cam, size) != size:
                raise DatasetError(
                    f"{where}: image is {size[0]}x{size[1]}, earlier ones {sizes[cam][0]}x{sizes[cam][1]}"
                )
            for target in targets:
                pending.setdefault(target, {})[cam] = (image, t)
            flush()
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    if cursor[0] < len(episodes):  # cannot happen unless the bag changed between the passes
        for writer in writers.values():
            writer.discard()
        raise DatasetError(f"{bag}: images changed while reading; episode {cursor[0]} is incomplete")
    return written


def _new_writer(out, bag, options, fps, images, sizes, index, steps, streams, identity) -> EpisodeWriter:
    """The writer of one episode, named and dated by when the bag recorded its first step."""
    cameras = {
        cam: CameraInfo(width=sizes[cam][0], height=sizes[cam][1], topic=options.image_topics[cam]) for cam in images
    }
    recorded_ns = int(streams.joint_received[steps[0].joint])
    return EpisodeWriter(
        out,
        fps=fps,
        instruction=options.instruction,
        cameras=cameras,
        task=options.task,
        start_time=datetime.fromtimestamp(recorded_ns / 1e9, tz=timezone.utc),
        extra={
            "imported_from": str(Path(bag).resolve()),
            "bag": identity,
            "episode_in_bag": index,
            "joint_topic": options.joint_topic,
            "time_source": options.time_source,
            "bag_start_ns": int(steps[0].time),
            "bag_end_ns": int(steps[-1].time),
            "recorded_start_ns": recorded_ns,
        },
    )


def _close(writer: EpisodeWriter, steps: list[Step], fps: float) -> Path:
    span_s = (steps[-1].time - steps[0].time) / 1e9
    achieved = round((len(steps) - 1) / span_s, 3) if span_s > 0 else None
    expected = int(round(span_s * fps)) + 1
    return writer.close(
        success=None,
        source=IMPORT_SOURCE,
        achieved_fps=achieved,
        dropped_steps=max(0, expected - len(steps)),
    )
