"""The synthetic MOT17 the motr tests share (imported by the conftest and the tests that check its shape)."""

from __future__ import annotations

#: Three sequences of 40, 41 and 42 frames (odd and even lengths for the half split).
SYNTH = {"num_sequences": 3, "frames_per_sequence": 40, "people_per_sequence": 6}
