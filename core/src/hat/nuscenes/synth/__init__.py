"""Synthetic nuScenes: a dataroot the devkit loads unchanged, with images a small model can learn from.

The real dataset cannot be downloaded here, so this writes the real raw layout::

    <dst>/<version>/{attribute,calibrated_sensor,category,ego_pose,instance,log,map,sample,
                     sample_annotation,sample_data,scene,sensor,visibility}.json
    <dst>/samples/CAM_*/<logfile>__<CAM>__<timestamp>.jpg      six per sample
    <dst>/samples/LIDAR_TOP/<logfile>__LIDAR_TOP__<timestamp>.pcd.bin   (empty: no points)
    <dst>/maps/<token>.png

Scenes carry the real split names (the ten mini scenes, or for ``v1.0-trainval`` the
first eight train and two val scenes of the devkit's lists), so the devkit's own split
logic applies. Every object is annotated in every key frame of its scene (so prev/next
chains exist and the devkit's ``box_velocity`` is exact), under its real category name.
Images default to 480x270: the full 1600x900 costs a CPU far more and teaches a tiny
model nothing more. A seed always writes the same bytes.

One module per job, so that each can change (the six-camera tasks build on them) without
reading the others:

- :mod:`~hat.nuscenes.synth.rig` — the cameras and the lidar: placement, intrinsics, trigger times.
- :mod:`~hat.nuscenes.synth.world` — the scenes: the ego's drive and the objects around it.
- :mod:`~hat.nuscenes.synth.render` — the camera images: shaded cuboids over a sky and a road.
- :mod:`~hat.nuscenes.synth.tables` — the 13 JSON tables: records, tokens and their links.
- :mod:`~hat.nuscenes.synth.generate` — :func:`generate_nuscenes`: options, files, all or nothing.
"""

from __future__ import annotations

from hat.nuscenes.synth.generate import generate_nuscenes
from hat.nuscenes.synth.render import background_image
from hat.nuscenes.synth.rig import FULL_HEIGHT, FULL_WIDTH, RIG, camera_intrinsic, camera_sensor2ego, image_height
from hat.nuscenes.synth.world import MINI_TRAIN, MINI_VAL, VERSIONS

__all__ = [
    "FULL_HEIGHT",
    "FULL_WIDTH",
    "MINI_TRAIN",
    "MINI_VAL",
    "RIG",
    "VERSIONS",
    "background_image",
    "camera_intrinsic",
    "camera_sensor2ego",
    "generate_nuscenes",
    "image_height",
]
