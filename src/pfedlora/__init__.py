"""pfedlora: model-heterogeneous personalized federated learning with LoRA-style adapters."""

__version__ = "0.1.0"
