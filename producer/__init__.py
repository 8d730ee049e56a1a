"""Producers: processes that generate frames with a model and serve them over ZeroMQ (needs torch)."""
