"""The 12 car keypoints HAT predicts, and how CarFusion's 14 annotation slots map onto them.

CarFusion annotates 14 slots (1-based ``kp_id``). The exhaust (9) and the car centre (14)
are dropped: the exhaust is often absent or hidden, and the centre lies inside the car,
so neither is a point a detector can see. Everything that names a keypoint index — the
packer, the flip augmentation, the drawing — reads it from here so that the order is
defined once.

Left and right are the *car's* own sides (the driver's left), not the viewer's. Even
indices are right-side points and the following odd index is the matching left-side
point, so mirroring an image swaps each pair in :data:`FLIP_PAIRS`.
"""

from __future__ import annotations

#: Keypoints predicted per car.
NUM_KEYPOINTS = 12

#: Names of the 14 CarFusion slots, 1-based like the annotation files (index 0 unused).
SLOT_NAMES: tuple[str, ...] = (
    "",
    "right_front_wheel",
    "left_front_wheel",
    "right_back_wheel",
    "left_back_wheel",
    "right_front_light",
    "left_front_light",
    "right_back_light",
    "left_back_light",
    "exhaust",
    "right_front_roof",
    "left_front_roof",
    "right_back_roof",
    "left_back_roof",
    "centre",
)
NUM_SLOTS = len(SLOT_NAMES) - 1

#: Slots kept, in the order of the 12 predicted keypoints.
KEPT_SLOTS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13)

#: 1-based CarFusion slot -> keypoint index 0..11, or None for a dropped slot.
SLOT_TO_INDEX: dict[int, int | None] = {slot: None for slot in range(1, NUM_SLOTS + 1)}
SLOT_TO_INDEX.update({slot: index for index, slot in enumerate(KEPT_SLOTS)})

#: Names of the 12 keypoints, by index.
NAMES: tuple[str, ...] = tuple(SLOT_NAMES[slot] for slot in KEPT_SLOTS)

#: Index pairs that trade places when the image is mirrored (right, left).
FLIP_PAIRS: list[tuple[int, int]] = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]

#: Which keypoints are on the car's left side (the odd members of FLIP_PAIRS).
IS_LEFT: tuple[bool, ...] = tuple(name.startswith("left_") for name in NAMES)

#: Lines drawn between keypoints to show the car's wireframe.
SKELETON: list[tuple[int, int]] = [
    # wheels: front axle, back axle, right side, left side
    (0, 1),
    (2, 3),
    (0, 2),
    (1, 3),
    # lights: front, back, right side, left side
    (4, 5),
    (6, 7),
    (4, 6),
    (5, 7),
    # roof rectangle
    (8, 9),
    (10, 11),
    (8, 10),
    (9, 11),
    # pillars: roof corner -> the light below it
    (8, 4),
    (9, 5),
    (10, 6),
    (11, 7),
]
