"""Datasets and their partition among federated clients."""

from pfedlora.data.datasets import ArrayDataset, load_dataset
from pfedlora.data.partition import ClientSplit, partition_clients, partition_counts

__all__ = ["ArrayDataset", "ClientSplit", "load_dataset", "partition_clients", "partition_counts"]
