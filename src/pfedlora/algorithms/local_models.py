"""Helpers for algorithms whose clients each keep a private local model (``local_model.*`` state)."""

from __future__ import annotations

from torch import nn

from pfedlora.algorithms.base import FederationContext, State, derive_seed, load_into, prefixed, unprefixed
from pfedlora.config import Config
from pfedlora.errors import UserError

LOCAL = "local_model."
SHARED = "shared_model."


def local_workspace(ctx: FederationContext, client_id: int) -> nn.Module:
    """The reusable module of client ``client_id``'s architecture (load a state into it before use)."""
    arch = ctx.client_arch(client_id)
    return ctx.cached_module(("model", arch), lambda: ctx.new_model(arch, seed=0))


def shared_workspace(ctx: FederationContext, arch: str) -> nn.Module:
    """A module for the shared model, distinct from the local workspace even for the same arch."""
    return ctx.cached_module(("shared_model", arch), lambda: ctx.new_model(arch, seed=0))


def init_local_state(ctx: FederationContext, client_id: int) -> State:
    """A freshly initialised private model, seeded by (seed, client)."""
    model = ctx.new_model(ctx.client_arch(client_id), seed=derive_seed(ctx.config.seed, "client", client_id))
    return prefixed(LOCAL, model.state_dict())


def load_local(ctx: FederationContext, client_id: int, state: State) -> nn.Module:
    return load_into(local_workspace(ctx, client_id), unprefixed(LOCAL, state))


def head_state(model: nn.Module) -> State:
    """The classification header's parameters (``weight``, ``bias``), detached copies."""
    return prefixed("", model.head.state_dict())


def representation_dim(ctx: FederationContext) -> int:
    """The one representation width every client's model produces (500 for the CNN pools, a family's
    ``feature_dim`` for HtFLlib's families): the width of prototypes, shared headers and guiding
    vectors. A pool of mixed widths is refused (UserError naming them)."""
    archs = sorted({ctx.client_arch(k) for k in range(ctx.config.num_clients)})
    dims = {arch: int(local_workspace_of(ctx, arch).representation_dim) for arch in archs}
    if len(set(dims.values())) != 1:
        raise UserError(f"{ctx.config.algorithm} needs one representation width for every client; the pool has {dims}")
    return next(iter(dims.values()))


def local_workspace_of(ctx: FederationContext, arch: str) -> nn.Module:
    return ctx.cached_module(("model", arch), lambda: ctx.new_model(arch, seed=0))


def refuse_mixed_heads(config: Config, what: str) -> None:
    """ValueError (one line) when the clients' heads differ in layout (HtFLlib's HtC families, ViT beside
    CNNs, mixed widths): ``what`` exchanges the head, so every client needs the same one."""
    from pfedlora.models.families import head_shape

    shapes: dict[str, str] = {}
    for arch in dict.fromkeys(config.model_pool + (config.client_models or [])):
        shapes.setdefault(head_shape(arch), arch)
    if len(shapes) > 1:
        found = "; ".join(f"{arch}: {shape}" for shape, arch in shapes.items())
        raise ValueError(f"{what} needs one head layout for every client; the pool has {len(shapes)} ({found}); "
                         "use a pool or family whose heads match (e.g. model_family HtFE-img-8)")
