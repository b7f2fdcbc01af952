"""Runtimes that move payloads between an algorithm's functions: the in-process simulator, Flower."""
