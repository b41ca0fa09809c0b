"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", arXiv:2211.01095): a deterministic ODE sampler of orders 1, 2 ("2M", the paper's algorithm 2) and 3 ("3M"),
in the data-prediction form, with MONAI's scheduler interface.

MONAI 1.6 has DDPM, DDIM, PNDM and rectified-flow schedulers but no DPM-Solver, hence this one. It subclasses
MONAI's :class:`~monai.networks.schedulers.Scheduler`, which holds ``alphas_cumprod`` for every ``schedule`` name,
so every noise schedule of :data:`monai_oct.schedulers.SCHEDULES` and the three prediction types work.

Notation: ``alpha_t = sqrt(alphas_cumprod[t])``, ``sigma_t = sqrt(1 - alphas_cumprod[t])``,
``lambda_t = log(alpha_t / sigma_t)``; ``D_i`` the network's output converted to x0 at the i-th timestep. One step
from ``s = t_i`` to ``t = t_{i+1}`` with ``h = lambda_t - lambda_s``:

- order 1: ``x_t = sigma_t / sigma_s x_s + alpha_t (1 - e^-h) D_i`` (DDIM with ``eta = 0``, exactly);
- order 2 (2M): ``D_i`` replaced by ``(1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1}``, ``r = h_{i-1} / h``;
- order 3 (3M): the third-order multistep update of the reference implementations (diffusers'
  ``DPMSolverMultistepScheduler``, ``algorithm_type="dpmsolver++"``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from monai.networks.schedulers import Scheduler

from monai_oct.schedulers.noise import Generators

__all__ = ["DPMSolverMultistepScheduler", "DPMSolverPP2MScheduler", "DPMSolverPP3MScheduler"]

#: the orders :class:`DPMSolverMultistepScheduler` implements.
SOLVER_ORDERS = (1, 2, 3)
#: below this many steps the last steps use lower orders (the reference implementations' ``lower_order_final``).
LOWER_ORDER_FINAL_BELOW = 15


class _Step(NamedTuple):
    """The scalars of one step ``t -> t_next`` (``t_next = -1``: the clean image)."""

    t_next: int
    alpha: float  # alpha_t, to convert the network output to x0
    sigma: float  # sigma_t
    c_x: float  # coefficient of x_t
    c_d: tuple[float, ...]  # coefficients of D_i, D_{i-1}, D_{i-2} (as many as the step's order)


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++ multistep sampler (deterministic), MONAI's interface.

    Timesteps (``set_timesteps(n)``): uniform and *trailing*, ``t_i = round(T - i T / n) - 1`` for ``i = 0 .. n-1``
    (``T-1, T-1-T/n, ..., T/n - 1``), then a final step to the clean image (``alpha = 1, sigma = 0``, what MONAI's DDIM
    calls ``final_alpha_cumprod``) whose result is the last x0 prediction. Trailing rather than MONAI's
    ``linspace(T - 1, 0, n)``: the chain starts at ``T - 1`` just the same, but no network evaluation is spent at
    ``t = 0`` (where ``x_t`` is already the image), every step spans ``T / n`` timesteps, and each step ends where
    MONAI's DDIM step does (``t - T // n``), so order 1 reproduces it step for step when ``n`` divides ``T``.

    Orders: the first step is first order (no earlier x0 yet), the second at most second order; the final step to the
    clean image is first order (``h`` is infinite there: the update is the x0 prediction itself); with fewer than 15
    steps the step before it is at most second order (the reference implementations' ``lower_order_final``, which
    keeps few-step sampling stable).

    The scheduler is stateful between steps: it keeps the x0 predictions of the chain's previous steps. A step at
    the first timestep starts a new chain (so one scheduler serves batch after batch), ``set_timesteps`` resets it.
    ``step`` draws no noise: ``generator`` is accepted for the interface and unused.

    With ``clip_sample`` the x0 prediction is clipped to ``clip_sample_values`` (as DDIM does) and the update uses
    the clipped x0 throughout (the data-prediction form); MONAI's DDIM keeps the network's epsilon in its direction
    term, so the two differ on steps where the clip is active.

    Args:
        num_train_timesteps: T of the forward process.
        schedule: a MONAI noise schedule name (``linear_beta``, ``cosine``, ...).
        solver_order: 1, 2 (DPM-Solver++(2M)) or 3 (3M).
        prediction_type: what the network predicts: ``epsilon``, ``v_prediction`` or ``sample``.
        clip_sample: clip the predicted x0 to ``clip_sample_values``.
        clip_sample_values: the clip range.
        lower_order_final: lower the order of the last steps when sampling with fewer than 15 steps.
        schedule_args: passed to the schedule function (``beta_start``, ``beta_end``, ...).

    Raises:
        ValueError: for an unknown solver order or prediction type.
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta", solver_order: int = 2,
                 prediction_type: str = "epsilon", clip_sample: bool = True,
                 clip_sample_values: Sequence[float] = (-1.0, 1.0), lower_order_final: bool = True,
                 **schedule_args) -> None:
        super().__init__(num_train_timesteps, schedule, **schedule_args)
        if solver_order not in SOLVER_ORDERS:
            raise ValueError(f"unknown DPM-Solver++ solver_order {solver_order!r}; choose one of {SOLVER_ORDERS}")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose epsilon, v_prediction or sample")
        self.solver_order, self.prediction_type = int(solver_order), prediction_type
        self.clip_sample, self.clip_sample_values = bool(clip_sample), tuple(float(v) for v in clip_sample_values)
        self.lower_order_final = bool(lower_order_final)
        self._steps: dict[int, tuple[int, _Step]] = {}
        self._x0s: list[torch.Tensor] = []  # the chain's x0 predictions, newest last
        self._last: int | None = None  # index of the chain's last step

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Trailing timesteps ``round(T - i T / n) - 1`` and each step's coefficients; resets the chain.

        Args:
            num_inference_steps: ``n``, the number of network evaluations.
            device: where ``timesteps`` lives.

        Raises:
            ValueError: for fewer than 1 or more than T steps.
        """
        n, T = int(num_inference_steps), int(self.num_train_timesteps)
        if not 1 <= n <= T:
            raise ValueError(f"num_inference_steps must be in [1, {T}] (num_train_timesteps), got {num_inference_steps}")
        self.num_inference_steps = n
        ts = [int(round(T - i * T / n)) - 1 for i in range(n)]
        self.timesteps = torch.tensor(ts, dtype=torch.long, device=device)
        targets = ts[1:] + [-1]  # -1: the clean image (alpha 1, sigma 0)
        ac = [float(a) for a in self.alphas_cumprod.double()]
        alpha = {t: math.sqrt(ac[t]) for t in ts} | {-1: 1.0}
        sigma = {t: math.sqrt(1.0 - ac[t]) for t in ts} | {-1: 0.0}
        lam = {t: math.log(alpha[t] / sigma[t]) if sigma[t] > 0 else math.inf for t in alpha}
        self._steps = {}
        for i, (t, s) in enumerate(zip(ts, targets)):
            order = min(self.solver_order, i + 1)
            if self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
                order = min(order, n - i)
            if sigma[s] == 0.0 or sigma[t] == 0.0:  # to the clean image (h infinite; or from it): x0 itself
                c_x, c_d = 0.0, (1.0,)
            else:
                c_x = sigma[s] / sigma[t]
                c_d = _multistep_coefficients(alpha[s], lam[s] - lam[t], [lam[t] - lam[ts[i - k]] for k in range(1, order)])
            self._steps[t] = (i, _Step(s, alpha[t], sigma[t], c_x, c_d))
        self._reset()

    def _reset(self) -> None:
        self._x0s, self._last = [], None

    def convert_model_output(self, model_output: torch.Tensor, alpha: float, sigma: float,
                             sample: torch.Tensor) -> torch.Tensor:
        """The network's output as x0 (the data prediction), clipped when ``clip_sample``.

        Args:
            model_output: epsilon, v or x0, as ``prediction_type``.
            alpha: ``alpha_t``.
            sigma: ``sigma_t``.
            sample: ``x_t``.

        Returns:
            the predicted x0.
        """
        if self.prediction_type == "epsilon":
            x0 = (sample - sigma * model_output) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * sample - sigma * model_output
        else:
            x0 = model_output
        if self.clip_sample:
            x0 = x0.clamp(*self.clip_sample_values)
        return x0

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DPM-Solver++ step from ``timestep`` to the next timestep of ``timesteps`` (the clean image after the last).

        Args:
            model_output: the network's output (epsilon, v or x0, as ``prediction_type``), shaped like ``sample``.
            timestep: the current timestep, one of ``timesteps``; the chain's steps must come in order, starting at
                ``timesteps[0]`` (which starts a new chain).
            sample: ``x_t``, ``(B, C, ...)``.
            generator: unused (the solver is deterministic); accepted for the samplers' common interface.

        Returns:
            ``(x_next, predicted x0)``.

        Raises:
            RuntimeError: before ``set_timesteps``.
            ValueError: for a timestep not in ``timesteps``, a step out of order, or an output shaped unlike the sample.
        """
        if not self._steps:
            raise RuntimeError(f"{type(self).__name__}.step called before set_timesteps(num_inference_steps)")
        t = int(timestep)
        if t not in self._steps:
            raise ValueError(f"timestep {t} is not one of the {self.num_inference_steps} timesteps set "
                             f"({[int(v) for v in self.timesteps]})")
        i, c = self._steps[t]
        if i == 0:
            self._reset()
        elif self._last != i - 1:
            prev = "none" if self._last is None else int(self.timesteps[self._last])
            raise ValueError(f"step at timestep {t} must follow timestep {int(self.timesteps[i - 1])} (last step: {prev}); "
                             f"a chain starts at timestep {int(self.timesteps[0])}")
        if model_output.shape != sample.shape:
            raise ValueError(f"model output of shape {tuple(model_output.shape)} does not match the sample "
                             f"{tuple(sample.shape)}")
        x0 = self.convert_model_output(model_output, c.alpha, c.sigma, sample)
        self._x0s = (self._x0s + [x0])[-self.solver_order:]
        out = sample * c.c_x if c.c_x else torch.zeros_like(sample)
        for k, coef in enumerate(c.c_d):
            out.add_(self._x0s[-1 - k], alpha=coef)
        self._last = i
        return out, x0


def _multistep_coefficients(alpha_t: float, h: float, h_prev: list[float]) -> tuple[float, ...]:
    """Coefficients of ``D_i, D_{i-1}, ...`` in a DPM-Solver++ multistep update of order ``1 + len(h_prev)``.

    Args:
        alpha_t: ``alpha`` of the step's target.
        h: the step's ``lambda_t - lambda_s``.
        h_prev: ``lambda_s - lambda_{s-k}`` for ``k = 1, ...`` (the distances back to the earlier x0s).

    Returns:
        the coefficients, newest x0 first.
    """
    phi1 = -math.expm1(-h)  # 1 - e^-h
    if not h_prev:  # order 1
        return (alpha_t * phi1,)
    r0 = h_prev[0] / h
    if len(h_prev) == 1:  # 2M: D = (1 + 1/(2 r0)) D_i - 1/(2 r0) D_{i-1}
        return (alpha_t * phi1 * (1 + 0.5 / r0), -alpha_t * phi1 * 0.5 / r0)
    r1 = (h_prev[1] - h_prev[0]) / h  # 3M, as diffusers' multistep_dpm_solver_third_order_update
    d1_0 = [1 / r0, -1 / r0, 0.0]  # (D_i - D_{i-1}) / r0
    d1_1 = [0.0, 1 / r1, -1 / r1]  # (D_{i-1} - D_{i-2}) / r1
    d1 = [a + r0 / (r0 + r1) * (a - b) for a, b in zip(d1_0, d1_1)]
    d2 = [(a - b) / (r0 + r1) for a, b in zip(d1_0, d1_1)]
    c1, c2 = alpha_t * (-phi1 / h + 1.0), -alpha_t * ((-phi1 + h) / h**2 - 0.5)
    return tuple(alpha_t * phi1 * (k == 0) + c1 * a + c2 * b for k, (a, b) in enumerate(zip(d1, d2)))


class DPMSolverPP2MScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(2M): :class:`DPMSolverMultistepScheduler` of order 2 (the sampler name ``dpmpp2m``)."""

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta", **kwargs) -> None:
        kwargs.setdefault("solver_order", 2)
        super().__init__(num_train_timesteps, schedule, **kwargs)


class DPMSolverPP3MScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(3M): :class:`DPMSolverMultistepScheduler` of order 3 (the sampler name ``dpmpp3m``)."""

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta", **kwargs) -> None:
        kwargs.setdefault("solver_order", 3)
        super().__init__(num_train_timesteps, schedule, **kwargs)
