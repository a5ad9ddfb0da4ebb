"""hat-keypoint: car keypoint detection on CarFusion, from raw data to an int8 model."""
