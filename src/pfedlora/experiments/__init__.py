"""Experiments over many runs: ``compare`` (algorithms on identical partitions and seeds), ``sweep``
(a grid of config values), ``report`` (figures), and the run records they read back.

This layer sits above the runtimes (:mod:`pfedlora.federation`): it plans runs and executes them there.
"""
