"""Quantization: the backend protocol and the default torch-native backend."""
