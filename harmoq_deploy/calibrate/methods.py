"""The optimising calibration methods: 2DQuant (the strongest public baseline) and HarmoQ.

Both are plain dataclasses (their fields are the method's settings, recorded in the artifact)
with ``run(model, crops, layout, seed, checkpoint)`` acting on a model already quantized and
initialised with DOBI bounds, returning the parameters they changed (corrected weights, folded
scales) and a record of what each step did.

- ``TwoDQuant``: DOBI, then DQC: the bounds alone refined by distillation to the float model.
- ``HarmoQ``: DOBI, then HSO (harmonized per-channel scales, folded), SRC (closed-form
  structural weight correction, rounded onto the weight grid with error feedback), ABR
  (refinement of the bounds, the weight grids' at a rate chosen by a short trial on held-out
  crops, and of the corrected weights and biases, alternating with HSO re-solves).
  Execution order is HSO -> SRC -> ABR: SRC compensates the activation error of the final
  activation grid, which HSO changes. Each closed-form step is kept only if it lowers the
  distillation loss on calibration crops held out from its fit: both solve per-layer proxies
  of that loss, and the guard stops a proxy win from being a network loss. With
  ``guard_iters > 0`` the loss is judged after a short refinement from each state instead, since
  ABR refines whatever the steps leave; it costs time and changed no result measurably, so it is
  not the default (docs/method.md, section 7).
"""

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .. import defaults
from ..models.layout import ArchLayout
from ..progress import progress_bar
from ..quant import quantizers, set_quantization_enabled
from .baselines import Dobi
from .bounds import initialise_bounds, set_weight_bounds
from .hso import FoldGroup, find_fold_groups, record_inputs, solve_group
from .observe import observe_activations
from .refine import RefineSettings, Teacher, refine_bounds
from .src import structural_residual_calibration



@dataclass
class StepReport:
    name: str
    applied: bool
    loss_before: float | None = None
    loss_after: float | None = None
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


@dataclass
class RunResult:
    changed_parameters: dict[str, torch.Tensor]
    steps: list[StepReport]
    scales: dict[str, dict]


def split_crops(crops: torch.Tensor, guard: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``guard`` crops held out to judge the closed-form steps, and the rest for them to fit on:
    a step judged on crops it was fitted to passes the guard by overfitting them."""
    order = torch.randperm(len(crops), generator=torch.Generator().manual_seed(seed + 1))
    guard = min(guard, len(crops) // 2) or len(crops)
    held_out = order[:guard]
    rest = order[guard:] if len(order) > guard else order
    return crops[held_out], crops[rest]


def _float_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter that is not a quantizer bound, to tell later what a method changed."""
    bounds = {id(p) for q in quantizers(model).values() for p in q.parameters()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in bounds}


def _changed_since(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if n in before and not torch.equal(p, before[n])}


def _refine_settings(method: "TwoDQuant | HarmoQ", weight_bound_lr: float | None = None) -> RefineSettings:
    """The distillation loop's settings from the method's: DQC and ABR share every one of them
    but the weight grids' rate, which HarmoQ chooses (None: the activations' rate)."""
    return RefineSettings(iters=method.iters, batch=method.batch, lr=method.lr, feature_weight=method.feature_weight,
                          bias_lr=method.bias_lr, weight_lr=method.weight_lr,
                          weight_lr_by_width=method.weight_lr_by_width, weight_bound_lr=weight_bound_lr)


@dataclass
class TwoDQuant:
    """2DQuant (Liu et al., NeurIPS 2024): DOBI bounds, then DQC bound refinement (weights frozen).

    ``bias_lr`` or ``weight_lr`` > 0 is not 2DQuant (the paper keeps every weight frozen): it is
    the control that gives DQC the freedom HarmoQ's ABR has, so a comparison can tell how much of
    HarmoQ's margin that freedom alone buys.
    """

    iters: int = defaults.ITERS
    batch: int = defaults.BATCH
    lr: float = defaults.LR
    feature_weight: float = defaults.FEATURE_WEIGHT
    bias_lr: float = 0.0
    weight_lr: float = 0.0
    weight_lr_by_width: bool = True
    name = "2dquant"

    def run(self, model: nn.Module, crops: torch.Tensor, layout: ArchLayout, seed: int = 0,
            checkpoint: Path | None = None) -> RunResult:
        start = time.perf_counter()
        before = _float_parameters(model)
        losses = refine_bounds(model, crops, layout.feature_taps, _refine_settings(self), seed=seed,
                               checkpoint=checkpoint, fingerprint={"method": self.name, **asdict(self)})
        step = StepReport("dqc", True, losses[0] if losses else None, losses[-1] if losses else None,
                          time.perf_counter() - start, {"iterations_run": len(losses)})
        return RunResult(_changed_since(model, before), [step], {})


@dataclass
class HarmoQ:
    """HarmoQ (Wang et al., AAAI 2026) as derived in docs/method.md: HSO, SRC, ABR on DOBI bounds.

    Named variants (the ablation's rungs, the controls, earlier settings) are in ``presets``.

    Args:
        iters: ABR's refinement iterations; 0 skips the refinement.
        batch: calibration crops per refinement step.
        lr: Adam rate of the quantizer bounds.
        feature_weight: weight of the feature-map term in the distillation loss.
        src: run SRC, the closed-form structural weight correction.
        hso: run HSO, the harmonized per-channel scales folded into the weights.
        abr: run ABR, the refinement by distillation to the float model.
        ridges: SRC's candidate ridge lambdas, relative to the Gram's mean diagonal; each layer
            keeps the one (or none) that its held-out half of the crops prefers.
        rounding_damping: damping of SRC's rounding of the corrected weights onto their grid with
            error feedback; None rounds to nearest.
        weight_bound_lrs: rates ABR may move the weight quantizers' bounds at (None: ``lr``).
            With more than one, each is tried for ``rate_trial_iters`` iterations from SRC's
            result on the fit crops and judged on the held-out crops; the best is kept.
        rate_trial_iters: iterations of each weight-grid rate trial.
        src_crops: calibration crops SRC's single pass uses.
        hso_crops: calibration crops HSO records its layers' inputs on.
        guard_crops: calibration crops held out to judge the closed-form steps and the rate trials.
        guard_iters: refinement iterations the guards run from the states with and without a step
            before comparing held-out losses; 0 compares the states as they are.
        hso_resolves: HSO re-solves ABR spreads evenly over its iterations.
        bias_lr: Adam rate at which ABR also refines the quantized layers' biases; 0 freezes them.
        weight_lr: Adam rate at which ABR also refines the quantized layers' (SRC-corrected)
            weights, at 3 bits; 0 freezes them.
        weight_lr_by_width: scale ``weight_lr`` to the grid's step at other widths.
    """

    iters: int = defaults.ITERS
    batch: int = defaults.BATCH
    lr: float = defaults.LR
    feature_weight: float = defaults.FEATURE_WEIGHT
    src: bool = True
    hso: bool = True
    abr: bool = True
    ridges: tuple[float, ...] = (0.05, 0.2, 1.0)
    rounding_damping: float | None = defaults.ROUNDING_DAMPING
    weight_bound_lrs: tuple[float | None, ...] = defaults.WEIGHT_BOUND_LRS
    rate_trial_iters: int = defaults.RATE_TRIAL_ITERS
    src_crops: int = 16
    hso_crops: int = 8
    guard_crops: int = 8
    guard_iters: int = 0
    hso_resolves: int = 3
    bias_lr: float = defaults.BIAS_LR
    weight_lr: float = defaults.WEIGHT_LR
    weight_lr_by_width: bool = True
    name = "harmoq"

    def run(self, model: nn.Module, crops: torch.Tensor, layout: ArchLayout, seed: int = 0,
            checkpoint: Path | None = None) -> RunResult:
        before = _float_parameters(model)
        guard, fit = split_crops(crops, self.guard_crops, seed)
        # SRC moves the float function (the corrected weights unquantized are not the float
        # model): every loss is taken against teachers computed before any step runs
        judge = _HeldOutJudge(self, model, guard, fit, layout.feature_taps, seed)
        teacher = Teacher(model, crops, layout.feature_taps) if self.abr and self.iters else None
        steps: list[StepReport] = []
        groups: list[FoldGroup] = []
        loss = judge(model) if self.hso or self.src else None
        if self.hso:
            groups, loss = self._harmonize(model, fit, judge, loss, seed, steps)
        if self.src:
            self._structural_residual(model, fit, judge, loss, seed, steps)
        if self.abr:
            self._refine(model, crops, teacher, groups, layout, seed, checkpoint, judge, steps)
        changed = _changed_since(model, before)
        scales = {g.producer: {"consumers": list(g.consumers), "scale": g.scale.clone(),
                               "exponent": g.exponent.item()}
                  for g in groups if not torch.isnan(g.exponent)}
        return RunResult(changed, steps, scales)

    def _guarded(self, model, judge: "_HeldOutJudge", loss_before: float, name, apply, steps) -> float:
        """Run ``apply()``; keep its effect only if the judged held-out loss drops. Return the
        judged loss of the state it leaves, the next step's ``loss_before``. A step that changed
        nothing is not judged: with ``guard_iters`` > 0 a judgment costs a short refinement."""
        start = time.perf_counter()
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        detail = apply()
        unchanged = all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
        loss_after = loss_before if unchanged else judge(model)
        applied = loss_after < loss_before
        if not applied:
            model.load_state_dict(saved)
        detail["judged_after_iters"] = judge.settings.iters
        steps.append(StepReport(name, applied, loss_before, loss_after, time.perf_counter() - start, detail))
        return loss_after if applied else loss_before

    def _harmonize(self, model, fit, judge, loss, seed, steps) -> tuple[list[FoldGroup], float]:
        param = next(model.parameters())
        set_quantization_enabled(model, False)
        try:
            groups = find_fold_groups(model, fit[:1].to(param))
            record_inputs(model, groups, fit[:self.hso_crops])
        finally:
            set_quantization_enabled(model, True)

        def apply() -> dict:
            changed = [g for g in progress_bar(groups, "harmonizing scales") if solve_group(model, g, False)]
            if changed:
                stats = observe_activations(model, fit, seed=seed, description="re-observing activations")
                initialise_bounds(model, Dobi(), stats)
            return {"fold_groups": len(groups), "scaled": len(changed)}

        kept_loss = self._guarded(model, judge, loss, "hso", apply, steps)
        if not steps[-1].applied:
            for g in groups:
                g.scale.fill_(1.0)
                g.exponent.fill_(float("nan"))
        return [g for g in groups if not torch.isnan(g.exponent)], kept_loss

    def _structural_residual(self, model, fit, judge, loss, seed, steps) -> None:
        def apply() -> dict:
            chosen = structural_residual_calibration(
                model, fit[-self.src_crops:], self.ridges,
                lambda layer: set_weight_bounds(layer.weight_quantizer, layer.weight, Dobi()), seed=seed,
                rounding_damping=self.rounding_damping)
            counts = {label: list(chosen.values()).count(label) for label in sorted(set(chosen.values()))}
            return {"corrected_layers": len(chosen), "ridge_counts": counts}

        self._guarded(model, judge, loss, "src", apply, steps)

    def rate_trial_iters_run(self) -> int:
        """How many refinement iterations each weight-grid rate is tried for: 0 when there is
        no choice to make."""
        return min(self.rate_trial_iters, self.iters) if self.abr and len(self.weight_bound_lrs) > 1 else 0

    def _weight_bound_trials(self, model, judge: "_HeldOutJudge") -> dict[float | None, float]:
        """The held-out loss a short refinement from the current state reaches at each weight-grid
        rate (the state is restored after each): SRC's rounding wants its grids still, but how much
        a model needs its weight grids to move is a property of the model (docs/method.md, section 3)."""
        iters = self.rate_trial_iters_run()
        if not iters:
            return {}
        return {rate: judge(model, replace(judge.settings, iters=iters, weight_bound_lr=rate),
                            f"trying weight-grid rate {self.lr if rate is None else rate:g}")
                for rate in self.weight_bound_lrs}

    def _refine(self, model, crops, teacher, groups, layout, seed, checkpoint, judge, steps) -> None:
        start = time.perf_counter()
        resolves = []
        trials = self._weight_bound_trials(model, judge)
        weight_bound_lr = min(trials, key=trials.get) if trials else self.weight_bound_lrs[0]

        every = max(self.iters // (self.hso_resolves + 1), 1)

        def between_steps(i: int) -> None:
            if groups and self.hso_resolves and (i + 1) % every == 0 and i + 1 < self.iters:
                resolves.append(sum(solve_group(model, g, True) for g in groups))

        carry = {f"{g.producer}.{part}": getattr(g, part) for g in groups for part in ("scale", "exponent")}
        losses = refine_bounds(model, crops, layout.feature_taps, _refine_settings(self, weight_bound_lr), seed=seed,
                               checkpoint=checkpoint, between_steps=between_steps, carry=carry,
                               fingerprint={"method": self.name, **asdict(self), "weight_bound_lr": weight_bound_lr},
                               teacher=teacher)
        steps.append(StepReport("abr", True, losses[0] if losses else None, losses[-1] if losses else None,
                                time.perf_counter() - start,
                                {"iterations_run": len(losses), "hso_resolves_changed_groups": resolves,
                                 "weight_bound_lr": weight_bound_lr,
                                 "weight_bound_lr_trials": {str(rate): loss for rate, loss in trials.items()}}))


class _HeldOutJudge:
    """The distillation loss on the held-out crops that a state of the model reaches after a
    short run of ABR's refinement on the fit crops (the state is restored after): ``guard_iters``
    iterations, never more than ABR runs, unless the call names other settings.

    ABR refines whatever HSO and SRC leave, so the guards compare where each state ends up, not
    where it starts, and the weight-grid rate trials where each rate leads. The short refinement
    fits the fit crops only, against a teacher of its own, so the held-out crops stay unseen;
    without ABR (or at 0 iterations) nothing is refined.
    """

    def __init__(self, method: HarmoQ, model: nn.Module, held_out: torch.Tensor, fit: torch.Tensor,
                 feature_taps: str, seed: int):
        iters = min(method.guard_iters, method.iters) if method.abr else 0
        self.settings = replace(_refine_settings(method, method.weight_bound_lrs[0]), iters=iters)
        self.feature_weight, self.feature_taps, self.fit, self.seed = method.feature_weight, feature_taps, fit, seed
        self.held_out = Teacher(model, held_out, feature_taps)
        self.fit_teacher = Teacher(model, fit, feature_taps) if iters or method.rate_trial_iters_run() else None

    def __call__(self, model: nn.Module, settings: RefineSettings | None = None,
                 description: str = "guard: short refinement") -> float:
        settings = settings or self.settings
        if not settings.iters:
            return self.held_out.judge(model, self.feature_weight)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            refine_bounds(model, self.fit, self.feature_taps, settings, seed=self.seed, teacher=self.fit_teacher,
                          description=description)
            return self.held_out.judge(model, self.feature_weight)
        finally:
            model.load_state_dict(saved)


OPTIMIZING_METHODS = {method.name: method for method in (TwoDQuant, HarmoQ)}
