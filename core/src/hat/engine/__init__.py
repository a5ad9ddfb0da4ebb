"""The training engine: trainers, calibrator, predictor, callbacks, checkpoints."""
