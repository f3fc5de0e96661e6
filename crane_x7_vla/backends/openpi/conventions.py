"""How data meets the network: this backend's own conventions, or openpi's π0 ones.

A run chooses with --conventions (auto | openpi | crane_x7; auto = openpi when --model
is an openpi checkpoint, crane_x7 for the presets). The choice is stored in the checkpoint
(policy_config.json openpi.conventions) and deployment applies the same.

| setting        | crane_x7 (presets)                      | openpi (π0)                                         |
|----------------|-----------------------------------------|-----------------------------------------------------|
| normalization  | quantile: q01..q99 -> [-1, 1], clipped  | zscore: (x - mean) / (std + 1e-6), unclipped        |
| prompt         | lowercase: [BOS] + lower-cased text     | openpi: stripped, '_' -> ' ', case kept, + "\\n"      |
| image_resize   | crop (random / centred), then resize    | pad: resize keeping aspect ratio, pad black         |
| image_slots    | one slot per camera                     | base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb,    |
|                |                                         | empty slots black and masked out of attention       |
| loss           | robot_dims: the robot's 8 dimensions    | all_dims: every padded dimension, as openpi         |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from crane_x7_vla.checkpoint_contract import CONFIG_FILE

#: openpi's π0 image slots (models/model.py IMAGE_KEYS there), in the order the model sees them.
OPENPI_IMAGE_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
CHOICES = ("auto", "openpi", "crane_x7")


@dataclass(frozen=True)
class Conventions:
    normalization: str = "quantile"
    prompt: str = "lowercase"
    image_resize: str = "crop"
    image_slots: tuple | None = None  # camera name (or None: empty) per slot; None: one slot per camera
    loss: str = "robot_dims"

    @property
    def name(self) -> str:
        return "openpi" if self.prompt == "openpi" else "crane_x7"

    def num_images(self, cameras) -> int:
        return len(self.image_slots) if self.image_slots is not None else len(cameras)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["image_slots"] = None if self.image_slots is None else list(self.image_slots)
        return out

    @classmethod
    def from_dict(cls, data: dict | None, where: str = f"{CONFIG_FILE} openpi.conventions") -> "Conventions":
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}")
        if data.get("image_slots") is not None:
            data["image_slots"] = tuple(data["image_slots"])
        conv = cls(**data)
        conv.check(where)
        return conv

    def check(self, where: str) -> None:
        allowed = {"normalization": ("quantile", "zscore"), "prompt": ("lowercase", "openpi"),
                   "image_resize": ("crop", "pad"), "loss": ("robot_dims", "all_dims")}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{where}: {name} must be one of {values} (got {getattr(self, name)!r})")


def openpi(cameras, slots=None) -> Conventions:
    """openpi's π0 conventions; `slots` names a camera (or None) per openpi image slot, by
    default the cameras in order (base, then left wrist, then right wrist)."""
    cameras = list(cameras)
    if slots is None:
        if len(cameras) > len(OPENPI_IMAGE_SLOTS):
            raise ValueError(f"openpi's π0 takes {len(OPENPI_IMAGE_SLOTS)} pictures, the run has {len(cameras)} "
                             f"cameras {cameras}; choose them with --image-slots")
        slots = cameras + [None] * (len(OPENPI_IMAGE_SLOTS) - len(cameras))
    slots = [None if s in (None, "") else str(s) for s in slots]
    if len(slots) != len(OPENPI_IMAGE_SLOTS):
        raise ValueError(f"--image-slots: give {len(OPENPI_IMAGE_SLOTS)} entries ({', '.join(OPENPI_IMAGE_SLOTS)}), "
                         f"a camera name or null each (got {slots})")
    unknown = [s for s in slots if s is not None and s not in cameras]
    if unknown:
        raise ValueError(f"--image-slots: camera(s) {unknown} are not among the run's cameras {cameras}")
    if not any(slots):
        raise ValueError("--image-slots: at least one slot needs a camera")
    return Conventions("zscore", "openpi", "pad", tuple(slots), "all_dims")


CRANE_X7 = Conventions()
