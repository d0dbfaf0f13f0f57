"""Evaluation: inference-mode accuracy, and the paper's Fig 3 control.

- ``accuracy``: the model in eval mode (moving statistics), over given batches.
- ``minibatch_stats_accuracy``: the paper's control for non-i.i.d. training: the
  model normalizes with the statistics of each test batch (every batch-statistics
  norm replaced by plain batch normalization over the whole batch, its affine
  parameters kept; no r/d correction, no moving average), test batches drawn the
  non-i.i.d. way (paper: 25 labels x 2 images). Run on a copy so no moving
  statistic or schedule step of the real model changes.
- ``moving_average_errors``: how far each layer's moving mean and std are from the
  population statistics of the inputs the inference network gives it, and the
  reference to read that against: how far the per-worker batch statistics that
  training normalized with stray from the same population (``batch_noise``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple, dataclass

import torch
from torch import Tensor, nn

from brn_repro.models import as_layout
from brn_repro.norm._common import MovingStdNorm
from brn_repro.norm._grouped import batch_stats, layout_of, normalize, sqrt
from brn_repro.norm.registry import batch_statistics_layer


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _to_model(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """Moves an input batch to ``model``'s device and dtype, in the layout of its first
    4D weight (batches follow the weights, as in training)."""
    first = next(model.parameters(), torch.empty(0))
    weight = next((p for p in model.parameters() if p.dim() == 4), first)
    layout = layout_of(weight)
    return lambda x: as_layout(x.to(first.device, first.dtype, non_blocking=True), layout)


@dataclass(frozen=True)
class Counts:
    """What an evaluation counts: sums, so the shards of a multi-process evaluation
    add up (``sum_over_processes``)."""

    correct: float = 0.0
    total: float = 0.0
    loss_sum: float = 0.0  # summed cross-entropy (0 where the loss is not counted)

    @property
    def accuracy(self) -> float:
        """In %."""
        return 100.0 * self.correct / max(self.total, 1)

    @property
    def loss(self) -> float:
        """Mean cross-entropy."""
        return self.loss_sum / max(self.total, 1)


def sum_over_processes(counts: Mapping[str, Counts], all_reduce_sum: Callable[[list[float]], list[float]]
                       ) -> dict[str, Counts]:
    """``counts`` summed over processes in one all-reduce (``all_reduce_sum`` sums a
    list of floats over processes, e.g. ``distributed.all_reduce_sum``)."""
    width = len(astuple(Counts()))
    flat = all_reduce_sum([value for c in counts.values() for value in astuple(c)])
    return {name: Counts(*flat[i * width:(i + 1) * width]) for i, name in enumerate(counts)}


@torch.inference_mode()
def accuracy_counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> Counts:
    """Correct, total and summed cross-entropy of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    device, to_model = _device(model), _to_model(model)
    # Accumulated on the device: one host sync at the end, not one per batch.
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    for x, y in batches:
        y = y.to(device, non_blocking=True)
        logits = model(to_model(x))
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        total += y.numel()
    model.train(was_training)
    return Counts(float(correct.item()), float(total), loss_sum.item())


def accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of ``model`` in eval mode."""
    counts = accuracy_counts(model, batches)
    return counts.accuracy, counts.loss


def _moving_estimates(layer: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(mu, sigma) that ``layer`` normalizes with at inference, sigma with eps inside as
    the layer applies it; None for layers without a moving mean (MABN, GroupNorm, ...)."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        if not layer.track_running_stats or layer.running_mean is None:
            return None
        return layer.running_mean.double(), sqrt(layer.running_var.double() + layer.eps)
    if isinstance(layer, MovingStdNorm):  # BRN, the moving-average norm: any dimension
        return layer.running_mean.double(), layer.running_std.double()  # eps already inside
    return None


@torch.inference_mode()
def moving_average_errors(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                          all_reduce: Callable[[Tensor], object] | None = None,
                          group_size: int | None = None) -> dict[str, float]:
    """Per layer, the channel means of |mu_ema - mu_pop| / sigma_pop and |sigma_ema / sigma_pop - 1|:
    whether inference is let down by the moving averages rather than the weights. mu_pop,
    var_pop: biased statistics of the layer's input over ``batches`` in eval mode (what the
    inference network gives it); sigma_pop = sqrt(var_pop + eps). Keys ``ema_error/{mean,std}``
    (mean over layers) and ``ema_error/<layer>/{mean,std}``; {} without such layers.

    ``group_size`` (examples per normalization group: the per-worker batch) adds the
    reference the errors are to be read against, the noise of the batch statistics
    training normalized with: each hooked batch is cut into consecutive groups of
    ``group_size`` examples (a remainder smaller than that is left out of the groups,
    not of the population), each group's mu_B and sigma_B = sqrt(var_B + eps) (biased,
    over examples and space) give |mu_B - mu_pop| / sigma_pop and |sigma_B / sigma_pop - 1|,
    averaged over groups and channels: keys ``batch_noise/{mean,std}`` (mean over
    layers) and ``batch_noise/<layer>/{mean,std}``, none where no batch held a group.

    ``all_reduce`` (``torch.distributed.all_reduce``, in place, summing) adds up the
    shards' population sums first; with ``group_size`` a second call sums the shards'
    error sums and group counts, taken against that global population (every process
    makes both calls, whether or not its shard held a group)."""
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size={group_size!r} must be a positive number of examples")
    layers = [(name or "layer", m) for name, m in model.named_modules() if _moving_estimates(m) is not None]
    if not layers:
        return {}
    device = _device(model)
    # Per layer, rows [sum x, sum x^2, count] per channel, in one buffer for one all-reduce.
    flat = torch.zeros(sum(3 * m.num_features for _, m in layers), dtype=torch.float64, device=device)
    sums = [part.view(3, -1) for part in flat.split([3 * m.num_features for _, m in layers])]
    # Per layer, the groups' [mu_B, sigma_B] (2 x groups x channels each), kept on the
    # device until the population is known: small next to the activations.
    groups: list[list[Tensor]] = [[] for _ in layers]
    _population_pass(model, batches, [(m, _statistics_hook(acc, stats, m.eps, group_size))
                                      for (_, m), acc, stats in zip(layers, sums, groups, strict=True)])
    if all_reduce is not None:
        all_reduce(flat)
    rows, noise = _errors_against_population(layers, sums, groups, device)
    if group_size is not None and all_reduce is not None:
        all_reduce(noise)
    # The one host sync; a layer the forward never reached has no population.
    values = torch.cat([torch.stack(rows), noise], dim=1).tolist()
    return _error_keys([(name, layer, v) for (name, layer), v in zip(layers, values, strict=True) if v[2] > 0])


def _statistics_hook(acc: Tensor, stats: list[Tensor], eps: float, group_size: int | None
                     ) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
    """A forward pre-hook adding a layer's input to its population sums ``acc`` and, with
    ``group_size``, its groups' [mu_B, sigma_B] to ``stats``."""
    def hook(_: nn.Module, args: tuple[Tensor, ...]) -> None:
        # One pass of var_mean in the activations' dtype (torch's cascaded sums:
        # ~1e-7 in float32), per group, then float64 on the small results: a float64
        # copy of every activation cost as much as the evaluation itself.
        x = args[0]
        per_example = x[0, 0].numel()
        whole = x.shape[0] // group_size if group_size is not None else 0
        parts = []  # (mean, var, values per channel) of disjoint pieces of the batch
        if whole:
            # (groups, group_size, C, ...): a view in either layout (the batch dim is outermost)
            cut = x[:whole * group_size].reshape(whole, group_size, *x.shape[1:])
            var, mean = torch.var_mean(cut, dim=[1, *range(3, cut.dim())], correction=0)
            mean, var = mean.double(), var.double()
            stats.append(torch.stack([mean, sqrt(var + eps)]))
            parts.append((mean, var, group_size * per_example))
        rest = x[whole * group_size:] if whole else x
        if rest.shape[0]:
            var, mean = torch.var_mean(rest, dim=[0, *range(2, rest.dim())], correction=0)
            parts.append((mean.double().unsqueeze(0), var.double().unsqueeze(0), rest.shape[0] * per_example))
        for mean, var, n in parts:
            acc[0] += mean.sum(0) * n
            acc[1] += (var + mean.square()).sum(0) * n
        acc[2] += x.shape[0] * per_example
    return hook


def _population_pass(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                     hooks: list[tuple[nn.Module, Callable[..., None]]]) -> None:
    """The model over ``batches`` in eval mode with ``hooks`` on; its modes restored after."""
    to_model = _to_model(model)
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(hook) for m, hook in hooks]
    try:
        model.eval()
        for x, _ in batches:
            model(to_model(x))
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.train(training)


def _errors_against_population(layers: list[tuple[str, nn.Module]], sums: list[Tensor],
                               groups: list[list[Tensor]], device: torch.device) -> tuple[list[Tensor], Tensor]:
    """Per layer, [ema mean error, ema std error, count] and, against the same population,
    [sum of |mu_B - mu| / sigma, sum of |sigma_B / sigma - 1|, groups]: sums, so the
    shards' add up once each has taken its groups against the global population."""
    rows = []
    noise = torch.zeros(len(layers), 3, dtype=torch.float64, device=device)
    for i, ((_, layer), (total, squares, count), stats) in enumerate(zip(layers, sums, groups, strict=True)):
        mu_ema, sigma_ema = _moving_estimates(layer)
        mu = total / count
        sigma = sqrt((squares / count - mu.square()).clamp_min(0) + layer.eps)
        rows.append(torch.stack([((mu_ema - mu).abs() / sigma).mean(),
                                 (sigma_ema / sigma - 1).abs().mean(), count[0]]))
        if stats:
            mu_b, sigma_b = torch.cat(stats, dim=1)
            noise[i, 0] = ((mu_b - mu).abs() / sigma).sum()
            noise[i, 1] = (sigma_b / sigma - 1).abs().sum()
            noise[i, 2] = mu_b.shape[0]
    return rows, noise


def _error_keys(reached: list[tuple[str, nn.Module, list[float]]]) -> dict[str, float]:
    """The metrics row's keys from the layers a forward reached (name, layer, values)."""
    out = {f"ema_error/{name}/{kind}": v[i] for name, _, v in reached for i, kind in enumerate(("mean", "std"))}
    for i, kind in enumerate(("mean", "std") if reached else ()):
        out[f"ema_error/{kind}"] = sum(v[i] for _, _, v in reached) / len(reached)
    # Means over groups and channels, then over the layers that saw a group.
    grouped = [(name, [v[3] / (v[5] * layer.num_features), v[4] / (v[5] * layer.num_features)])
               for name, layer, v in reached if v[5] > 0]
    for name, v in grouped:
        out[f"batch_noise/{name}/mean"], out[f"batch_noise/{name}/std"] = v
    for i, kind in enumerate(("mean", "std") if grouped else ()):
        out[f"batch_noise/{kind}"] = sum(v[i] for _, v in grouped) / len(grouped)
    return out


class _MinibatchNorm(nn.Module):
    """Normalize with the statistics of the batch at hand, whatever the layer did in
    training (BN, BRN, the moving-average norm, MABN): the probe's norm layer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.weight, self.bias, self.eps = layer.weight, layer.bias, layer.eps

    def forward(self, x: Tensor) -> Tensor:
        mean, var = batch_stats(x)  # torch's training kernel is off by 1e-5 on channels-last
        return normalize(x, mean, var, self.weight, self.bias, self.eps)


def minibatch_stats_probe(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose batch-statistics norms normalize each batch with its own
    mean and variance (one group: the whole batch); the model itself is untouched."""
    probe = copy.deepcopy(model).eval()
    targets = [(name, m) for name, m in probe.named_modules()
               if name and batch_statistics_layer(m)]
    for name, layer in targets:
        probe.set_submodule(name, _MinibatchNorm(layer))
    return probe


@torch.inference_mode()
def minibatch_stats_counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> Counts:
    """Correct and total (no loss) with every norm layer using the statistics of the test batch itself."""
    probe = minibatch_stats_probe(model)
    device, to_model = _device(probe), _to_model(probe)
    correct, total = torch.zeros((), dtype=torch.long, device=device), 0
    for x, y in batches:
        y = y.to(device, non_blocking=True)
        correct += (probe(to_model(x)).argmax(1) == y).sum()
        total += y.numel()
    return Counts(float(correct.item()), float(total))


def minibatch_stats_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Accuracy (%) with every norm layer using the statistics of the test batch itself."""
    return minibatch_stats_counts(model, batches).accuracy


class WeightEMA:
    """Exponential moving average of all parameters and floating buffers (the paper
    evaluates with moving averages of the parameters, mu and sigma included): timm's
    ``ModelEmaV3``, which lerps every floating tensor of the state dict and copies the
    integer ones (a BRN layer's step, BN's num_batches_tracked), per tensor (foreach off:
    ``lerp_`` as before, bit for bit) and without its bfloat16 stochastic rounding.
    (torch's ``AveragedModel`` + ``get_ema_multi_avg_fn`` does not fit: it averages integer
    buffers too, copies the model at its first update, and renames the state's keys.)
    ``state_dict`` is the averaged model's own, as checkpoints have always held it."""

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils.model_ema import ModelEmaV3  # timm is slow to import: only with an EMA

        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay={decay!r} must lie in (0, 1)")
        self.decay = decay
        self.ema = ModelEmaV3(model, decay=decay, foreach=False, stochastic_rounding=False)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def model(self) -> nn.Module:
        """The averaged copy of the model, in eval mode."""
        return self.ema.module

    def update(self, model: nn.Module) -> None:
        self.ema.update(model)

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)
