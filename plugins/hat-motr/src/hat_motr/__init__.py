"""hat-motr: multi-object tracking on MOT17 (MOTR: detect and track queries, a tracker between frames)."""
