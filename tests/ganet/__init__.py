"""Tests of the hat-ganet plugin."""
