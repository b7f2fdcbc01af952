"""Local models (CNN-1..5, ...) and the homogeneous low-rank adapters."""

from pfedlora.models.adapters import PersonalizedModel, build_adapter, factorize
from pfedlora.models.registry import build_model, model_names, parameter_count

__all__ = ["PersonalizedModel", "build_adapter", "build_model", "factorize", "model_names", "parameter_count"]
