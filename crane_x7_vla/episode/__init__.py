"""The on-disk episode format shared by collection, training and deployment.

See `crane_x7_vla.episode.schema` for the layout and keys.
"""

from crane_x7_vla.episode.reader import (
    DatasetError,
    EpisodeData,
    EpisodeRef,
    iter_steps,
    list_episodes,
    list_partial,
    load_episode,
    load_statistics,
    require_episodes,
)
from crane_x7_vla.episode.schema import CameraInfo, EpisodeMeta
from crane_x7_vla.episode.writer import EpisodeWriter, recover_partial

__all__ = [
    "CameraInfo",
    "DatasetError",
    "EpisodeData",
    "EpisodeMeta",
    "EpisodeRef",
    "EpisodeWriter",
    "iter_steps",
    "list_episodes",
    "list_partial",
    "load_episode",
    "load_statistics",
    "recover_partial",
    "require_episodes",
]
