"""Tests of the hat-keypoint plugin."""
