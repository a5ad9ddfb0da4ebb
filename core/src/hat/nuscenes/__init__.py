"""nuScenes for the camera tasks: packing, a synthetic dataroot, geometry and the devkit's metric.

- :mod:`hat.nuscenes.constants` — class, attribute and camera names (the packed indices).
- :mod:`hat.nuscenes.geometry` — quaternions, frames, global <-> camera boxes (numpy only).
- :mod:`hat.nuscenes.synth` — ``hat synth nuscenes``: a dataroot the devkit loads unchanged.
- :mod:`hat.nuscenes.packer` — ``hat pack nuscenes``: one record per key-frame sample.
- :mod:`hat.nuscenes.metric` — ``NuscenesMetric``: NDS / mAP by the devkit's DetectionEval.

nuscenes-devkit is an optional dependency (``pip install 'hat-core[nuscenes]'``): nothing
here imports it at module level, so core and `hat list` work without it, and whatever
needs it says how to install it (:func:`hat.nuscenes.devkit.require_devkit`).
"""
