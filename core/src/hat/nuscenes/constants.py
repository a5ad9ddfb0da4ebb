"""Names shared by everything that reads nuScenes: classes, attributes, cameras.

The orders are fixed: packed data stores indices into these tuples, so changing an order
changes the meaning of every pack. ``DETECTION_CLASSES`` is the devkit's own order
(``nuscenes.eval.detection.constants.DETECTION_NAMES``), so class ``i`` here is class
``i`` in its tables. A box without an attribute (every barrier and traffic cone, and the
odd unlabelled box) is stored as attribute ``-1``.
"""

from __future__ import annotations

DETECTION_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)

ATTRIBUTES: tuple[str, ...] = (
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.moving",
    "pedestrian.standing",
    "pedestrian.sitting_lying_down",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)

#: Index of "no attribute" in packed data.
NO_ATTRIBUTE = -1

CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)

LIDAR = "LIDAR_TOP"

#: The attributes the devkit scores for each class (``detection_name_to_rel_attributes``).
CLASS_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "car": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "truck": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "bus": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "trailer": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "construction_vehicle": ("vehicle.moving", "vehicle.parked", "vehicle.stopped"),
    "pedestrian": ("pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"),
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "traffic_cone": (),
    "barrier": (),
}

#: The attribute reported for a detection whose predicted attribute does not fit its class:
#: the most frequent one of the class in nuScenes (the convention of the reference
#: FCOS3D results), "" for the classes the devkit scores without attributes.
DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "pedestrian": "pedestrian.moving",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "traffic_cone": "",
    "barrier": "",
}

#: The real nuScenes category names (``category.json``); the first ten map to the
#: detection classes in this order, the rest map to none (the devkit ignores them).
CATEGORY_OF_CLASS: dict[str, str] = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "construction_vehicle": "vehicle.construction",
    "pedestrian": "human.pedestrian.adult",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "traffic_cone": "movable_object.trafficcone",
    "barrier": "movable_object.barrier",
}

#: The devkit split names of each version's `--split train|val|test`.
SPLIT_NAMES: dict[str, dict[str, str]] = {
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
}

#: What to install when the devkit is missing.
DEVKIT_HINT = "pip install 'hat-core[nuscenes]'"
