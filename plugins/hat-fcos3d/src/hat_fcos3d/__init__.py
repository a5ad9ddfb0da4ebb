"""hat-fcos3d: monocular 3D detection on nuScenes (FCOS3D)."""
