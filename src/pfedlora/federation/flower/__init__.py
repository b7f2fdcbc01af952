"""Flower runtime: a ServerApp and a ClientApp (Flower Message API) that run the simulator's algorithm
functions over the network. The Flower app directory (for ``flwr run``) is :data:`APP_DIR`."""

from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "app"
