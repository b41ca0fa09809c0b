"""Rectified flow (``prediction_type="flow"``) on MONAI's ``RFlowScheduler``: the training scheduler and its samplers.

MONAI's convention (``RFlowScheduler.add_noise``), with ``s = t / T`` in ``(0, 1]``::

    x_s = (1 - s) * x0 + s * noise,        velocity  v = x0 - noise = -dx_s/ds,

so the clean image is ``x0 = x_s + s * v`` and one Euler step from ``s`` to ``s' < s`` is ``x_s' = x_s + (s - s') * v``
(``RFlowScheduler.step``, whose ``dt = (t - t_next) / T``). The network is trained to regress ``v = x0 - noise``
(what MAISI does); training draws ``t`` with ``RFlowScheduler.sample_timesteps`` (``uniform`` or ``logit-normal``,
optionally shifted towards noise for larger images by its ``timestep_transform``).

- :class:`FlowEulerScheduler` (``--sampler euler``): MONAI's Euler step, one network evaluation (NFE) per step;
- :class:`FlowHeunScheduler` (``--sampler heun``): Heun's second-order method (the trapezoid rule with an Euler
  predictor), 2 NFE per step except the last, which is an Euler step to ``s = 0``: ``2K - 1`` NFE for ``K`` steps.

Both are deterministic (``generator`` is accepted and unused) and elementwise in the batch, so a sample never depends
on its batch mates.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.schedulers import RFlowScheduler

from monai_oct.schedulers.noise import Generators

__all__ = ["FLOW", "FlowEulerScheduler", "FlowHeunScheduler"]

#: the prediction type of a rectified-flow network (its output is the velocity ``x0 - noise``).
FLOW = "flow"


class FlowEulerScheduler(RFlowScheduler):
    """MONAI's ``RFlowScheduler`` with the project's scheduler interface and ``prediction_type = "flow"``.

    Training uses MONAI's ``sample_timesteps`` and ``add_noise`` as they are; sampling uses MONAI's timesteps
    (``set_timesteps``: ``T, T(1 - 1/K), ..., T/K``, shifted by the timestep transform when it is on) and its Euler
    ``step``, to which this class adds what the bundles need: the next timestep looked up from the chain (MONAI's
    ``step`` without ``next_timestep`` assumes ``dt = 1/K``, wrong for the last step of a shifted chain), the
    ``generator`` argument of the other schedulers and ``clip_sample``.

    Args:
        num_train_timesteps: ``T``: ``t / T`` is the noise fraction ``s`` of ``x_t``.
        schedule: unused (the path of rectified flow is linear in ``s``); taken for :func:`diffusion_scheduler`'s
            interface.
        prediction_type: must be ``"flow"``.
        clip_sample: clip the predicted ``x0 = x_s + s v`` to [-1, 1] and step with the velocity of the clipped
            ``x0``, ``v' = (clip(x_s + s v) - x_s) / s`` (equal to ``v`` when nothing is clipped).
        sample_method: training timesteps: ``"uniform"`` or ``"logit-normal"`` (more weight to mid-way ``s``).
        use_timestep_transform: MONAI's resolution-dependent shift of the timesteps towards noise, in 2D:
            ``s' = r s / (1 + (r - 1) s)`` with ``r = sqrt(H W / base_img_size_numel)`` (training and sampling).
        base_img_size_numel: the ``H W`` at which the transform is the identity.
        use_discrete_timesteps: integer timesteps (MONAI's default; training ``t`` in ``0..T-1``, shifted to
            floats by the transform); keep it: MONAI's ``step`` truncates a float ``next_timestep`` to an integer.
        kwargs: passed to ``RFlowScheduler`` (``loc``, ``scale`` of the logit-normal).

    Raises:
        ValueError: for a prediction type other than ``"flow"`` or an unknown ``sample_method``.
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str | None = None, prediction_type: str = FLOW,
                 clip_sample: bool = True, sample_method: str = "uniform", use_timestep_transform: bool = False,
                 base_img_size_numel: int = 64 * 64, use_discrete_timesteps: bool = True, **kwargs: Any) -> None:
        if prediction_type != FLOW:
            raise ValueError(f"{type(self).__name__} samples rectified-flow networks (prediction_type {FLOW!r}), got "
                             f"prediction_type {prediction_type!r}; use a diffusion sampler for it "
                             "(monai_oct.schedulers.DIFFUSION_SAMPLERS)")
        super().__init__(num_train_timesteps, use_discrete_timesteps=bool(use_discrete_timesteps),
                         sample_method=sample_method, use_timestep_transform=bool(use_timestep_transform),
                         base_img_size_numel=int(base_img_size_numel), spatial_dim=2, **kwargs)
        self.prediction_type = FLOW
        self.clip_sample = bool(clip_sample)
        self._next: dict[float, float] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      input_img_size_numel: int | None = None) -> None:
        """MONAI's timesteps of ``num_inference_steps`` Euler steps (``H W = input_img_size_numel`` for the
        timestep transform; without it the transform is the identity, the sampler passes the size it samples).

        Raises:
            ValueError: for a number of steps outside ``[1, T]``.
        """
        if self.use_timestep_transform and input_img_size_numel is None:
            input_img_size_numel = self.base_img_size_numel
        super().set_timesteps(num_inference_steps, device, input_img_size_numel)
        chain = [float(t) for t in self.timesteps]
        self._next = dict(zip(chain, chain[1:] + [0.0]))

    def next_timestep(self, timestep: float | torch.Tensor) -> float:
        """The timestep after ``timestep`` in the chain of :meth:`set_timesteps` (0 after the last).

        Raises:
            ValueError: when ``timestep`` is not in the chain (names it and the chain).
        """
        t = float(timestep)
        if t not in self._next:
            raise ValueError(f"timestep {t:g} is not in this {type(self).__name__}'s chain {list(self._next)}; call "
                             "set_timesteps first and step through its timesteps, or pass next_timestep")
        return self._next[t]

    def velocity(self, model_output: torch.Tensor, sample: torch.Tensor, timestep: float) -> torch.Tensor:
        """The network's velocity, made consistent with a clipped ``x0`` when ``clip_sample`` is on."""
        if not self.clip_sample:
            return model_output
        s = float(timestep) / self.num_train_timesteps
        return ((sample + s * model_output).clamp(-1.0, 1.0) - sample) / s

    def step(self, model_output: torch.Tensor, timestep: float, sample: torch.Tensor,
             next_timestep: float | None = None, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One Euler step (MONAI's ``RFlowScheduler.step``) from ``timestep`` to the next one of the chain.

        Args:
            model_output: the predicted velocity ``x0 - noise``.
            timestep: the current timestep ``t`` (``s = t / T``).
            sample: ``x_s``.
            next_timestep: where to step to; None: the next timestep of the chain (0 after the last).
            generator: unused (the step is deterministic); accepted as in the other schedulers.

        Returns:
            ``(x_next, predicted x0)``.

        Raises:
            ValueError: when ``next_timestep`` is None and ``timestep`` is not in the chain.
        """
        nxt = self.next_timestep(timestep) if next_timestep is None else float(next_timestep)
        v = self.velocity(model_output, sample, timestep)
        return super().step(v, timestep, sample, nxt)


class FlowHeunScheduler(FlowEulerScheduler):
    """Heun's method (second order) for rectified flow, 2 network evaluations per step except the last.

    From ``x_i`` at ``s_i`` to ``s_{i+1}``: ``v_1 = v(x_i, s_i)``, the Euler predictor ``x~ = x_i + (s_i - s_{i+1}) v_1``,
    ``v_2 = v(x~, s_{i+1})`` and ``x_{i+1} = x_i + (s_i - s_{i+1}) (v_1 + v_2) / 2``; the last step (to ``s = 0``, where
    the velocity is not needed) is Euler's. As diffusers' ``HeunDiscreteScheduler`` does, the two evaluations are
    two entries of ``timesteps``, ``t_0, t_1, t_1, t_2, t_2, ..., t_{K-1}, t_{K-1}`` (``2K - 1`` = the NFE of ``K``
    steps), and ``step`` alternates predictor and corrector: any loop "one network call and one ``step`` per
    timestep" (the project's ``DiffusionSampler``, MONAI's inferers, the overhead benchmark) runs it unchanged and
    counts its evaluations right. The state between the two calls is one batch of ``x_i`` and ``v_1``; a step at
    ``t_0`` starts a new chain.

    Args:
        args, kwargs: :class:`FlowEulerScheduler`'s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chain: list[float] = []
        self._index = 0
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      input_img_size_numel: int | None = None) -> None:
        """The Euler chain of ``num_inference_steps`` steps with every timestep after the first doubled.

        Raises:
            ValueError: for a number of steps outside ``[1, T]``.
        """
        super().set_timesteps(num_inference_steps, device, input_img_size_numel)
        base = self.timesteps
        self.timesteps = torch.cat([base[:1], base[1:].repeat_interleave(2)])
        self._chain = [float(t) for t in self.timesteps]
        self._index, self._state = 0, None

    def step(self, model_output: torch.Tensor, timestep: float, sample: torch.Tensor,
             next_timestep: float | None = None, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next half of a Heun step: the Euler predictor at an even position of ``timesteps``, the corrector at
        an odd one; the last position is a plain Euler step to ``s = 0``.

        Args:
            model_output: the predicted velocity at (``sample``, ``timestep``).
            timestep: the current entry of ``timesteps`` (the chain is walked in order).
            sample: ``x_i`` for a predictor, the predictor's ``x~`` for a corrector.
            next_timestep: must be None (the chain decides).
            generator: unused (deterministic).

        Returns:
            ``(x, predicted x0)``: after a predictor ``x~`` (what the network sees next), after a corrector ``x_{i+1}``.

        Raises:
            ValueError: for a ``next_timestep``, a chain not set, or a timestep out of the chain's order.
        """
        if next_timestep is not None:
            raise ValueError("FlowHeunScheduler steps along its own chain; next_timestep must be None")
        t = float(timestep)
        if self._chain and t == self._chain[0]:
            self._index, self._state = 0, None  # a new chain
        k = self._index
        if k >= len(self._chain) or self._chain[k] != t:
            expected = self._chain[k] if k < len(self._chain) else "none (the chain is finished)"
            raise ValueError(f"FlowHeunScheduler.step at timestep {t:g}, expected {expected}: call set_timesteps and "
                             f"step through its timesteps in order, one network evaluation each")
        self._index += 1
        v = self.velocity(model_output, sample, t)
        s = t / self.num_train_timesteps
        if k % 2 == 0:  # predictor (x_i at s_i)
            x0 = sample + s * v
            if k == len(self._chain) - 1:
                return x0, x0  # the last step: Euler to s = 0 is x0
            s_next = self._chain[k + 1] / self.num_train_timesteps
            self._state = (sample, v)
            return sample + (s - s_next) * v, x0
        assert self._state is not None  # k odd follows an even k of this chain
        x_i, v_1 = self._state
        self._state = None
        s_prev = self._chain[k - 1] / self.num_train_timesteps
        return x_i + (s_prev - s) * 0.5 * (v_1 + v), sample + s * v
