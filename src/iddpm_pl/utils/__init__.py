"""Glue shared by the entry points: config checks, builders, images, logging."""
