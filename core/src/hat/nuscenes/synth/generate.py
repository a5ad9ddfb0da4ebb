"""``generate_nuscenes``: checks the options, then writes a dataroot scene by scene, all or nothing.

This is the one module that touches the file system: it simulates each scene
(:mod:`~hat.nuscenes.synth.world`), records it (:mod:`~hat.nuscenes.synth.tables`),
draws each camera's image (:mod:`~hat.nuscenes.synth.render`) and writes the files,
under a temporary folder that is moved into place only when everything is written.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from hat import console
from hat.errors import UserError
from hat.nuscenes.constants import CAMERAS, DETECTION_CLASSES, LIDAR
from hat.nuscenes.devkit import require_devkit
from hat.nuscenes.synth.render import Camera, encode_jpeg, packed_boxes
from hat.nuscenes.synth.rig import FULL_WIDTH, image_height, lidar_sensor2ego, time_offset_us
from hat.nuscenes.synth.tables import NuscenesTables, SceneTokens, sample_filename
from hat.nuscenes.synth.world import VERSIONS, Scene, scene_names, simulate_scene

_OUTPUTS = ("samples", "maps")  # beside the version's table folder


def generate_nuscenes(
    dst: Path,
    *,
    seed: int,
    version: str = "v1.0-mini",
    samples_per_scene: int = 8,
    objects_per_sample: int = 16,
    image_width: int = 480,
) -> None:
    """Write a synthetic nuScenes ``version`` dataroot under ``dst`` (ten scenes).

    ``image_width`` sets the camera resolution (height keeps nuScenes' 16:9). Refuses a
    ``dst`` that already holds tables or samples; a failed run leaves nothing behind.
    """
    require_devkit("`hat synth nuscenes`")
    dst = Path(dst)
    _check_options(dst, version, samples_per_scene, objects_per_sample, image_width)
    scenes = scene_names(version)
    writer = _DatarootWriter(seed, version, image_width)
    tmp = dst / f".synth-{uuid.uuid4().hex[:8]}"
    try:
        with console.progress() as bar:
            task = bar.add_task("synth nuscenes", total=len(scenes) * samples_per_scene)
            for index, name in enumerate(scenes):
                rng = np.random.default_rng([seed % 2**63, index])
                scene = simulate_scene(index, name, rng, samples_per_scene, objects_per_sample)
                writer.write_scene(tmp, scene, lambda: bar.advance(task))
        writer.tables.write(tmp / version)
        _move_into_place(tmp, dst, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_options(dst: Path, version: str, samples_per_scene: int, objects_per_sample: int, image_width: int) -> None:
    if version not in VERSIONS:
        raise UserError(f"cannot synthesize nuScenes version {version!r}", hint=f"use one of {', '.join(VERSIONS)}")
    if samples_per_scene < 2:
        raise UserError("samples_per_scene must be at least 2 (velocities need a previous or next key frame)")
    if objects_per_sample < len(DETECTION_CLASSES):
        raise UserError(
            f"objects_per_sample must be at least {len(DETECTION_CLASSES)} (one object of every detection class)"
        )
    if not 64 <= image_width <= FULL_WIDTH:
        raise UserError(f"image_width {image_width} is out of range", hint=f"use 64..{FULL_WIDTH}")
    for name in (version, *_OUTPUTS):
        if (dst / name).exists() and any((dst / name).iterdir()):
            raise UserError(
                f"{dst / name} already exists and is not empty",
                hint="choose another --dst, or remove the old synthetic data first",
            )


def _move_into_place(tmp: Path, dst: Path, version: str) -> None:
    for name in (version, *_OUTPUTS):
        if (dst / name).exists():
            (dst / name).rmdir()  # empty, checked before anything was written
        (tmp / name).rename(dst / name)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class _DatarootWriter:
    """Writes simulated scenes into a dataroot: their records into the tables, their images and files to disk."""

    def __init__(self, seed: int, version: str, image_width: int) -> None:
        self.tables = NuscenesTables(seed, version, image_width, image_height(image_width))
        self.cameras = {ch: Camera(ch, image_width) for ch in CAMERAS}
        self.sensor2ego = {ch: camera.sensor2ego for ch, camera in self.cameras.items()}
        self.sensor2ego[LIDAR] = lidar_sensor2ego()
        self.intrinsic = {ch: camera.intrinsic for ch, camera in self.cameras.items()}

    def write_scene(self, root: Path, scene: Scene, tick: Callable[[], object]) -> None:
        """The scene's records and files, calling ``tick`` after each key frame."""
        tokens = self.tables.scene_tokens(scene)
        self._record_scene(root, scene, tokens)
        for k in range(scene.num_samples):
            self._write_key_frame(root, scene, tokens, k)
            tick()

    def _record_scene(self, root: Path, scene: Scene, tokens: SceneTokens) -> None:
        """The records of the whole scene: its log and map, the calibrations, the instances, the scene."""
        self.tables.add_log(scene, tokens)
        new_map = self.tables.add_map(scene.location, tokens.log)
        if new_map is not None:
            (root / "maps").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / new_map), np.zeros((20, 20), np.uint8))  # an empty semantic prior
        self.tables.add_calibrated_sensors(tokens, self.sensor2ego, self.intrinsic)
        self.tables.add_instances(scene, tokens)
        self.tables.add_scene(scene, tokens)

    def _write_key_frame(self, root: Path, scene: Scene, tokens: SceneTokens, k: int) -> None:
        """Key frame ``k``: the sample, its annotations, and every sensor's pose, file and sample data."""
        self.tables.add_sample(scene, tokens, k)
        annotations = scene.annotations(k)
        self.tables.add_annotations(scene, tokens, k, annotations)
        boxes = packed_boxes(annotations)
        for channel in (LIDAR, *CAMERAS):
            self._write_sensor_frame(root, scene, tokens, k, channel, boxes)

    def _write_sensor_frame(
        self, root: Path, scene: Scene, tokens: SceneTokens, k: int, channel: str, boxes: dict[str, np.ndarray]
    ) -> None:
        """``channel`` at key frame ``k``: the ego's pose when it fires, its file (an image, or an empty
        point cloud for the lidar), and the sample data that points at both."""
        offset = time_offset_us(channel)
        timestamp = scene.timestamp_us(k) + offset
        ego2global = scene.ego.matrix(scene.times[k] + offset / 1e6)
        pose_token = self.tables.add_ego_pose(scene, channel, k, timestamp, ego2global)
        filename = sample_filename(scene.logfile, channel, timestamp)
        if channel == LIDAR:
            data = b""  # no points: nothing here reads them
        else:
            data = encode_jpeg(self.cameras[channel].render(boxes, scene.objects, ego2global))
        _write_file(root / filename, data)
        self.tables.add_sample_data(tokens, channel, k, timestamp, pose_token, filename)
