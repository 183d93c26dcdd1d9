"""Latency benchmarks: the desktop LiteRT interpreter and Android phones over adb."""
