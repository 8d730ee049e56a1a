"""Torch-free pieces shared by producers and consumers: geometry, frames, files, seeding, wire protocol."""
