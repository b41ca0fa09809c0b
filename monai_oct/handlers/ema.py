"""Exponential moving average (EMA) of a network's weights, updated after every training iteration."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Keep ``ema_model``, an EMA copy of ``network``: ``ema = d * ema + (1 - d) * weights`` per update.

    With ``warmup`` the decay of update ``n`` (counted from 0) is ``min(decay, (1 + n) / (10 + n))``, so
    the first updates follow the fast-changing weights closely instead of dragging the random initial
    weights along for thousands of steps. Buffers (none in the diffusion UNet's GroupNorm) are copied.

    Args:
        network: the trained network.
        decay: the EMA decay ``d`` in [0, 1).
        warmup: use the warm-up decay above.
        update_every: update every this many iterations.

    Raises:
        ValueError: for a decay outside [0, 1) or ``update_every < 1``.

    Example::

        ema = EMA(net, decay=0.999)
        ema.attach(trainer)          # updates after every iteration
        torch.save(ema.state_dict(), "ema.pt")
    """

    def __init__(self, network: nn.Module, decay: float = 0.999, warmup: bool = True, update_every: int = 1) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if int(update_every) < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.network, self.decay, self.warmup, self.update_every = network, float(decay), bool(warmup), int(update_every)
        self.ema_model = copy.deepcopy(network).eval()
        self.ema_model.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the network's current weights."""
        d = self.current_decay()
        ema_p = [p for p in self.ema_model.parameters()]
        net_p = [p.detach() for p in self.network.parameters()]
        if ema_p:
            torch._foreach_lerp_(ema_p, net_p, 1.0 - d)
        for be, bn in zip(self.ema_model.buffers(), self.network.buffers()):
            be.copy_(bn)
        self.num_updates += 1

    def attach(self, engine: Engine) -> None:
        """Update after every ``update_every``-th iteration of ``engine``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.update_every), lambda _: self.update())

    def __call__(self, engine: Engine) -> None:
        """Attach to ``engine`` (MONAI handler convention)."""
        self.attach(engine)

    def state_dict(self) -> dict[str, Any]:
        """``{"model": EMA weights, "num_updates": n}``."""
        return {"model": self.ema_model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: when ``state`` lacks the EMA weights.
        """
        if "model" not in state:
            raise ValueError(f"EMA state must hold 'model' (and 'num_updates'), got keys {sorted(state)}")
        self.ema_model.load_state_dict(state["model"])
        self.num_updates = int(state.get("num_updates", 0))
