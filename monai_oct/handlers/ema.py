"""Exponential moving average (EMA) of a network's weights: ignite's ``EMAHandler`` with a resumable state."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch import nn

__all__ = ["EMA"]


class EMA(EMAHandler):
    """Ignite's :class:`~ignite.handlers.EMAHandler` (``ema = d * ema + (1 - d) * weights``) that a checkpoint can restore.

    Ignite's handler does the averaging and keeps ``ema_model``; this subclass adds what it lacks for this
    project, and only that:

    - ``state_dict``/``load_state_dict`` (EMA weights and the update count), so ``last.pt`` holds the EMA and a
      resumed run continues it exactly; ignite's handler has no state of its own to save.
    - a warm-up decay that depends on the number of updates, ``min(decay, (1 + n) / (10 + n))``, so the first
      updates follow the fast-changing weights instead of dragging the random initial weights along for
      thousands of steps. Ignite's warm-up (``momentum_warmup``) is a linear ramp over a fixed number of
      iterations whose counter lives in a scheduler created at ``attach`` and is not saved, so it restarts on
      resume.

    Buffers are copied from the network (ignite's ``handle_buffers="copy"``; the diffusion UNet's GroupNorm has none),
    and so are parameters without gradient: what changes in them is not trained but computed from buffers (the
    codebook of MONAI's ``VQVAE`` is ``ema_w / ema_cluster_size``, re-set by k-means at epoch starts with its codes in
    a new order), so averaging them would give a codebook that matches neither its buffers nor any encoder output.

    Args:
        network: the trained network.
        decay: the EMA decay ``d`` in [0, 1) (ignite's ``momentum`` is ``1 - d``).
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
        # ignite wants 0 < momentum < 1 here; every update sets the momentum from current_decay() anyway
        super().__init__(network, momentum=min(max(1.0 - float(decay), 1e-6), 1.0 - 1e-6), handle_buffers="copy")
        self.network, self.decay, self.warmup, self.update_every = network, float(decay), bool(warmup), int(update_every)
        self.ema_model.requires_grad_(False)
        self.num_updates = 0
        # parameters trained without gradients (a VQ codebook set by its own EMA or k-means) are copied, not averaged:
        # the pairs are fixed by the network, so they are found once here rather than at every update
        self._copied = [(e, p) for e, p in zip(self.ema_model.parameters(), self.model.parameters()) if not p.requires_grad]

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    def _update_ema_model(self, engine: Engine, name: str) -> None:
        """Set ``engine.state.<name>`` (ignite's momentum) from :meth:`current_decay`, then ignite's update."""
        setattr(engine.state, name, 1.0 - self.current_decay())
        super()._update_ema_model(engine, name)
        with torch.no_grad():
            for ema_p, p in self._copied:
                ema_p.copy_(p)
        self.num_updates += 1

    def attach(self, engine: Engine, name: str = "ema_momentum", warn_if_exists: bool = False,
               event: Any = None) -> None:
        """Update after every ``update_every``-th iteration of ``engine`` (``event`` overrides it)."""
        super().attach(engine, name=name, warn_if_exists=warn_if_exists,
                       event=event if event is not None else Events.ITERATION_COMPLETED(every=self.update_every))

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
