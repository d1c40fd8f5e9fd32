"""Microphone/file/pipe to avatar: sources, post-processing and network sinks."""
