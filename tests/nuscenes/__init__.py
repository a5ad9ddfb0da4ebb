"""Tests of core's nuScenes layer (skipped where nuscenes-devkit is not installed)."""
