"""hat-ganet: lane detection on CULane (GANet with a MixVarGENet backbone)."""
