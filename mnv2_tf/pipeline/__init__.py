"""The main job in one call: train -> export -> evaluate -> benchmark -> report."""
