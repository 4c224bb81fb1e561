"""The pmap training loop: a ResNet on packed ImageNet-layout data, Flax + Optax.

Shaped like flax ``examples/imagenet/train.py``: ``create_*`` factories, pure
module-level :func:`train_step` / :func:`eval_step` wrapped with
``jax.pmap(..., axis_name='batch')``, gradients averaged with ``lax.pmean`` (across
hosts too: pmap's axis spans every device of every process), batch norm over each
device's batch by default (or groups of devices, or all: ``bn_group_devices``) with
the running statistics averaged across devices once per step, the input pipeline
separate from the step.

Throughput habits (big_vision / MLPerf): no host sync in the step loop (metrics stay
on device and are fetched every ``log_every_steps``), donated state buffers, batches
prefetched to the devices two ahead, images sent as uint8 and normalised on device,
the compile step excluded from the images/s figures, the clock read after blocking
on the device.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import jax_utils
from flax.training import train_state

from trainers import models
from trainers.preprocess import MEAN_RGB, STDDEV_RGB
from trainers.options import TrainConfig


class TrainState(train_state.TrainState):
    """Flax TrainState plus the batch-norm statistics."""

    batch_stats: Any = None


def compute_dtype(config: TrainConfig):
    """The compute dtype ``config.dtype`` names, as a ``jax.numpy`` type
    (``bfloat16`` or ``float32``; parameters stay float32)."""
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def bn_axis(config: TrainConfig, num_devices: int) -> tuple[str | None, Any]:
    """``(axis_name, axis_index_groups)`` of the batch norms for
    ``config.bn_group_devices`` on a pmap axis of ``num_devices`` devices:
    ``(None, None)`` per device (1, or a single device); ``("batch", None)`` across
    every device (0, or a group as large as the axis); else ``("batch", [[0..k-1],
    [k..2k-1], ...])``: consecutive axis indices, which are the devices of one host
    when k divides the local device count (pmap orders devices host by host).

    Raises:
      ValueError: k does not divide ``num_devices`` or the local device count.
    """
    k = config.bn_group_devices
    if k == 1 or num_devices == 1:
        return None, None
    if k == 0 or k >= num_devices:
        return "batch", None
    local = min(num_devices, jax.local_device_count())
    if num_devices % k or local % k:
        raise ValueError(f"bn_group_devices ({k}) must divide the device count "
                         f"({num_devices}) and the local device count ({local})")
    groups = [list(range(i, i + k)) for i in range(0, num_devices, k)]
    if num_devices == jax.device_count():  # pmap's axis order is jax.devices()'
        procs = [{jax.devices()[i].process_index for i in g} for g in groups]
        if any(len(p) > 1 for p in procs):
            raise ValueError(f"bn_group_devices ({k}): a group of consecutive devices "
                             f"spans several hosts in this device order")
    return "batch", groups


def create_model(config: TrainConfig, num_devices: int | None = None) -> models.ResNet:
    """The ResNet the config names, its batch norms pooling statistics as
    :func:`bn_axis` says for a pmap over ``num_devices`` (default: every device)."""
    name, groups = bn_axis(config, num_devices or jax.device_count())
    return models.create_model(config.arch, config.num_classes, width=config.width,
                               dtype=compute_dtype(config), small_images=config.small_images,
                               zero_init_last_bn=config.zero_init_last_bn,
                               blurpool=config.blurpool, bn_axis_name=name,
                               bn_axis_index_groups=groups)


def create_learning_rate_fn(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], Any]:
    """The learning rate at each optimizer step (0-based) for ``config.schedule``;
    returns a function step (int or int array) -> float32 learning rate.

    With ``T = round(epochs x steps_per_epoch)`` steps in all, peak ``lr``, ``W =
    round(warmup_epochs x steps_per_epoch)`` warmup steps (at most ``T - 1``) and
    ``f = warmup_start_fraction``:

    * ``cosine`` / ``constant`` / ``step``: for ``t < W`` the gradual warmup of Goyal
      et al. 2017 (arXiv:1706.02677, section 2.2), ``lr x (f + (1 - f) t / W)``;
      then ``cosine``: ``lr x (1 + cos(pi min(t - W, D) / D)) / 2`` with ``D = T - W``
      (Loshchilov & Hutter 2017; flax ``examples/imagenet``); ``constant``: ``lr``;
      ``step``: ``lr x decay_factor^k``, ``k`` the number of ``decay_epochs`` (x
      steps_per_epoch, rounded) at or before ``t`` (Goyal et al. section 5.1 and He
      et al. 2016: x0.1 at epochs 30, 60, 80).
    * ``poly``: MLPerf ResNet-50 ``PolynomialDecayWithWarmup`` (mlcommons/training
      ``image_classification/tensorflow2/lars_util.py``): ``lr x t / W`` for ``t <=
      W`` (with ``f``: ``lr x (f + (1 - f) t / W)``), then ``end + (lr - end) x (1 -
      min(t - W, D) / D)^power`` with ``D = T - W + 1`` (``end_learning_rate``,
      ``poly_power``: 1e-4 and 2 in the reference).
    * ``triangular``: FFCV's step-free ramp (libffcv/ffcv-imagenet
      ``train_imagenet.py``, ``get_cyclic_lr`` interpolated per iteration in
      ``train_loop``): ``np.interp(t / steps_per_epoch, [0, warmup_epochs, epochs],
      [f x lr, lr, 0])``; FFCV: ``f = 1e-4``, ``warmup_epochs`` = ``lr_peak_epoch``
      = 2.
    """
    lr = float(config.learning_rate)
    f = float(config.warmup_start_fraction)
    total = max(1, int(round(config.epochs * steps_per_epoch)))
    warmup = min(total - 1, int(round(config.warmup_epochs * steps_per_epoch)))
    if config.schedule == "triangular":
        return _triangular(config, steps_per_epoch, lr, f)
    if config.schedule == "poly":
        return _poly(config, total, warmup, lr, f)
    if config.schedule == "constant":
        main = lambda t: jnp.full(jnp.shape(t), lr, jnp.float32)  # noqa: E731
    elif config.schedule == "step":
        bounds = jnp.asarray([int(round(e * steps_per_epoch)) for e in config.decay_epochs]
                             or [total + 1], jnp.int32)
        factor = float(config.decay_factor)

        def main(t):
            k = jnp.sum(jnp.asarray(t)[..., None] + warmup >= bounds, axis=-1)
            return (lr * factor ** k.astype(jnp.float32)).astype(jnp.float32)
    else:
        decay = max(1, total - warmup)

        def main(t):
            frac = jnp.minimum(jnp.asarray(t, jnp.float32), decay) / decay
            return (lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))).astype(jnp.float32)

    def schedule(step):
        t = jnp.asarray(step, jnp.int32)
        warm = lr * (f + (1.0 - f) * t.astype(jnp.float32) / max(1, warmup))
        return jnp.where(t < warmup, warm, main(jnp.maximum(t - warmup, 0))).astype(jnp.float32)
    return schedule


def _poly(config: TrainConfig, total: int, warmup: int, lr: float, f: float):
    """MLPerf's ``PolynomialDecayWithWarmup`` (see :func:`create_learning_rate_fn`)."""
    end, power = float(config.end_learning_rate), float(config.poly_power)
    decay = total - warmup + 1

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = lr * (f + (1.0 - f) * t / max(1, warmup))
        frac = jnp.minimum(t - warmup, decay) / decay
        poly = end + (lr - end) * (1.0 - frac) ** power
        return jnp.where(t <= warmup, warm, poly).astype(jnp.float32) if warmup else \
            poly.astype(jnp.float32)
    return schedule


def _triangular(config: TrainConfig, steps_per_epoch: int, lr: float, f: float):
    """FFCV's step-free linear ramp (see :func:`create_learning_rate_fn`)."""
    peak_epoch, epochs = float(config.warmup_epochs), float(config.epochs)
    xs = jnp.asarray([0.0, peak_epoch, epochs] if peak_epoch > 0 else [0.0, epochs])
    ys = jnp.asarray([f * lr, lr, 0.0] if peak_epoch > 0 else [lr, 0.0])

    def schedule(step):
        e = jnp.asarray(step, jnp.float32) / steps_per_epoch
        return jnp.interp(e, xs, ys).astype(jnp.float32)
    return schedule


def decay_mask(params) -> Any:
    """True for parameters that get weight decay: kernels of convolutions and dense
    layers (ndim > 1); False for batch-norm scales/biases and dense biases."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def create_optimizer(config: TrainConfig, learning_rate_fn) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and masked L2 weight decay; LARS (You et al. 2017,
    ``optax.lars``, trust ratio skipped on batch-norm and biases); or AdamW."""
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=config.nesterov))
    if config.optimizer == "lars":
        return optax.lars(learning_rate_fn, weight_decay=config.weight_decay,
                          weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask,
                          momentum=config.momentum, nesterov=config.nesterov)
    return optax.adamw(learning_rate_fn, weight_decay=config.weight_decay, mask=decay_mask)


def create_train_state(rng, config: TrainConfig, model, learning_rate_fn) -> TrainState:
    """Initialise parameters, batch statistics and optimizer state on the host."""
    size = config.image_size

    @jax.jit
    def init(rng):
        return model.init({"params": rng}, jnp.zeros((1, size, size, 3), compute_dtype(config)),
                          train=False)

    variables = init(rng)
    tx = create_optimizer(config, learning_rate_fn)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])


def normalize_images(images, dtype):
    """uint8 ``[..., H, W, 3]`` -> ``dtype`` normalised with the ImageNet mean / std."""
    mean = jnp.asarray(MEAN_RGB, jnp.float32)
    std = jnp.asarray(STDDEV_RGB, jnp.float32)
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def cross_entropy_loss(logits, labels, num_classes: int, label_smoothing: float):
    """Mean softmax cross-entropy with label smoothing (Szegedy et al. 2016).
    ``logits`` float32 ``[B, C]``, ``labels`` int ``[B]``."""
    one_hot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        one_hot = optax.smooth_labels(one_hot, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, one_hot))


def train_step(state: TrainState, batch, *, learning_rate_fn, config: TrainConfig):
    """One SGD step on one device's shard of the batch; call under ``pmap``.

    ``batch``: ``image uint8 [B, S, S, 3]``, ``label int32 [B]``. Returns the new
    state and metrics (``loss``, ``accuracy``, ``learning_rate``) averaged across
    devices, and the gradient noise scale's inputs (``trainers.noise_scale``):
    ``grad_sq_per_device``, the mean over devices of the squared norm of each device's
    gradient (averaged over its per-device batch), and ``grad_sq_mean``, the squared
    norm of the gradient averaged over all devices (float32 scalars, before weight
    decay).
    """
    images = normalize_images(batch["image"], compute_dtype(config))

    def loss_fn(params):
        logits, new_model_state = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            mutable=["batch_stats"])
        loss = cross_entropy_loss(logits, batch["label"], config.num_classes,
                                  config.label_smoothing)
        return loss, (new_model_state, logits)

    (loss, (new_model_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    # The gradient noise scale's two inputs (McCandlish et al. 2018, appendix A.1;
    # trainers.noise_scale): each device's gradient over its per-device batch and the
    # average over the global batch; one scalar pmean, no extra gradient all-reduce.
    grad_sq_per_device = jax.lax.pmean(tree_sq_norm(grads), axis_name="batch")
    grads = jax.lax.pmean(grads, axis_name="batch")
    mean_loss = jax.lax.pmean(loss, axis_name="batch")
    batch_stats = new_model_state["batch_stats"]
    if config.bn_group_devices != 0:
        # Per-device (or per-group) statistics normalised this step; the running
        # averages are averaged over every device once per step, so the state stays
        # one replicated copy that evaluation and checkpoints read.
        batch_stats = jax.lax.pmean(batch_stats, axis_name="batch")
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    # The skip decision is taken on the averaged loss and gradients, identical on every
    # device of every host, so one device's NaN makes every replica skip the step (and
    # the replicas can never diverge); the step is counted in ``nonfinite``.
    finite = jnp.isfinite(mean_loss) & all_finite(grads)
    new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = {
        "loss": mean_loss,
        "accuracy": jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == batch["label"]), "batch"),
        "learning_rate": learning_rate_fn(state.step),
        "nonfinite": 1.0 - finite.astype(jnp.float32),
        "grad_sq_per_device": grad_sq_per_device,
        "grad_sq_mean": tree_sq_norm(grads),
    }
    return new_state, metrics


def tree_sq_norm(tree) -> jax.Array:
    """Sum of squares of every element of every leaf of ``tree`` (float32 scalar)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves) if leaves \
        else jnp.zeros((), jnp.float32)


def all_finite(tree) -> jax.Array:
    """True (a bool scalar) when every element of every leaf of ``tree`` is finite."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves \
        else jnp.asarray(True)


def eval_step(state: TrainState, batch, *, config: TrainConfig):
    """Sums of top-1 / top-5 hits, loss and counted examples over the masked batch,
    summed across devices. ``batch``: ``image``, ``label``, ``mask bool [B]``.

    With ``config.eval_flip`` the logits are the mean of the image's and its
    horizontal mirror's (FFCV's ``lr_tta``, libffcv/ffcv-imagenet ``val_loop``:
    ``output += model(ch.flip(images, dims=[3]))``; the sum there, the mean here:
    the same ranking)."""
    images = normalize_images(batch["image"], compute_dtype(config))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, images, train=False)
    if config.eval_flip:
        logits = 0.5 * (logits + state.apply_fn(variables, images[:, :, ::-1], train=False))
    mask = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    top5 = jax.lax.top_k(logits, min(5, config.num_classes))[1]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    out = {
        "top1": jnp.sum((top5[:, 0] == labels) * mask),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
        "loss": jnp.sum(loss * mask),
        "count": jnp.sum(mask),
    }
    return jax.lax.psum(out, axis_name="batch")


def make_p_train_step(config: TrainConfig, learning_rate_fn):
    """``jax.pmap(train_step, axis_name='batch', in_axes=(None, 0), out_axes=(None, 0))``
    over every device of every process, donating the state.

    The train state goes in and out as one array replicated over the devices (not a
    per-device stack), as in flax's current ``examples/imagenet``: jax >= 0.7 runs
    pmap as ``jit`` of ``shard_map`` over a 1-D mesh named ``'batch'``, and with
    ``in_axes=None`` / ``out_axes=None`` the state is a replicated ``jax.Array`` that
    orbax saves and ``jax.device_get`` reads without an unreplicate. The batch is
    ``[local_devices, per_device_batch, ...]`` (``trainers.feed``); metrics come back
    ``[local_devices]`` (each already averaged over all devices).
    """
    return jax.pmap(functools.partial(train_step, learning_rate_fn=learning_rate_fn,
                                      config=config), axis_name="batch",
                    in_axes=(None, 0), out_axes=(None, 0), donate_argnums=(0,))


def make_p_eval_step(config: TrainConfig):
    """``jax.pmap(eval_step, in_axes=(None, 0), out_axes=None)``: the replicated state
    and a ``[local_devices, B, ...]`` batch in, the sums over all devices out."""
    return jax.pmap(functools.partial(eval_step, config=config), axis_name="batch",
                    in_axes=(None, 0), out_axes=None)


def shard_batch(batch: dict, num_devices: int) -> dict:
    """Reshape host arrays ``[num_devices * B, ...]`` to ``[num_devices, B, ...]``.

    Raises:
      ValueError: the leading size is not divisible by the device count.
    """
    def reshape(x):
        x = np.asarray(x)
        if x.ndim == 0:
            return x
        if x.shape[0] % num_devices:
            raise ValueError(f"Batch size ({x.shape[0]}) must be divisible by device count "
                             f"({num_devices})")
        return x.reshape((num_devices, -1) + x.shape[1:])
    return {k: reshape(v) for k, v in batch.items() if np.ndim(v) > 0}


def compiled_step_memory(config: TrainConfig, per_device_batch: int, *,
                         device=None) -> dict[str, int] | None:
    """Bytes the compiled train step needs on one device at ``per_device_batch``,
    from XLA's memory analysis, without running it or allocating the state.

    Uses ``jax.pmap(train_step).lower(...).compile().memory_analysis()`` on abstract
    shapes (``jax.eval_shape``). Returns ``{'argument', 'output', 'temp', 'alias',
    'generated_code', 'total'}`` in bytes, where ``total = argument + output + temp -
    alias`` (donated state buffers are counted once), or None when the backend gives
    no analysis (or all zeros, known on some JAX GPU versions).
    """
    cfg = dataclasses.replace(config, per_device_batch=per_device_batch)
    model = create_model(cfg, num_devices=1)
    lr_fn = create_learning_rate_fn(cfg, 100)
    state_shape = jax.eval_shape(
        lambda r: create_train_state(r, cfg, model, lr_fn), jax.random.PRNGKey(0))
    devices = [device or jax.local_devices()[0]]

    def add_axis(x):
        return jax.ShapeDtypeStruct((1,) + tuple(x.shape), x.dtype)

    state_abs = jax.tree_util.tree_map(add_axis, state_shape)
    batch_abs = {
        "image": jax.ShapeDtypeStruct((1, per_device_batch, cfg.image_size, cfg.image_size, 3),
                                      jnp.uint8),
        "label": jax.ShapeDtypeStruct((1, per_device_batch), jnp.int32),
    }
    compiled = _one_device_step(cfg, lr_fn, devices).lower(state_abs, batch_abs).compile()
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without the analysis
        return None
    if ma is None:
        return None
    out = {
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "temp": int(ma.temp_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
        "generated_code": int(getattr(ma, "generated_code_size_in_bytes", 0)),
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    if out["total"] <= 0:
        return None
    return out


def _one_device_step(config: TrainConfig, lr_fn, devices):
    """The train step over ``devices`` with a leading device axis. ``jax.pmap`` on a
    single process; on a multi-host run (where pmap must span every process) the same
    per-device computation as ``jax.jit(jax.vmap(..., axis_name='batch'))`` on one local
    device, so measuring never needs the other hosts."""
    fn = functools.partial(train_step, learning_rate_fn=lr_fn, config=config)
    if jax.process_count() == 1:
        return jax.pmap(fn, axis_name="batch", donate_argnums=(0,), devices=devices)
    return jax.jit(jax.vmap(fn, axis_name="batch"), donate_argnums=(0,))


def synthetic_batches(config: TrainConfig, num_devices: int, seed: int = 0) -> Iterator[dict]:
    """Endless identical random uint8 batches ``[num_devices * B, S, S, 3]`` (compute
    only: the step rate with no input pipeline)."""
    rng = np.random.default_rng(seed)
    b = num_devices * config.per_device_batch
    batch = {"image": rng.integers(0, 256, (b, config.image_size, config.image_size, 3),
                                   dtype=np.uint8),
             "label": rng.integers(0, config.num_classes, (b,), dtype=np.int32)}
    while True:
        yield batch


def measure_step_rate(config: TrainConfig, *, steps: int = 10, warmup: int = 2,
                      devices=None, before_timed: Callable[[], None] | None = None
                      ) -> dict[str, float]:
    """Images/s of the pmap train step on synthetic input over ``devices`` (default:
    all local devices): the rate the input pipeline must sustain.

    The compile step and ``warmup`` steps are excluded; the clock is read after
    ``block_until_ready``. ``before_timed()``, when given, is called after the warmup,
    just before the timed steps (a memory probe resets its peak there). Returns
    ``{'images_per_s', 'step_s', 'compile_s', 'global_batch', 'live_bytes'}``, where
    ``live_bytes`` is the size of the train state and batch on the devices (sum of
    their arrays' ``nbytes``, bytes) while the steps run. On a multi-host run one
    local device is timed and the rate multiplied by the local device count.
    """
    devices = devices or jax.local_devices()
    scale = 1
    if jax.process_count() > 1:
        scale, devices = len(devices), devices[:1]
    n = len(devices)
    model = create_model(config, num_devices=n)
    lr_fn = create_learning_rate_fn(config, 1000)
    state = create_train_state(jax.random.PRNGKey(config.seed), config, model, lr_fn)
    step = _one_device_step(config, lr_fn, devices)
    host = shard_batch(next(synthetic_batches(config, n)), n)
    if jax.process_count() == 1:
        state = jax_utils.replicate(state, devices)
        batch = next(jax_utils.prefetch_to_device(iter([host]), 1, devices))
    else:
        state = jax.device_put(jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], state),
                               devices[0])
        batch = jax.device_put(host, devices[0])
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    live = sum(int(x.nbytes) for x in jax.tree_util.tree_leaves((state, batch)))
    if before_timed is not None:
        before_timed()
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - t0) / steps
    gb = n * scale * config.per_device_batch
    return {"images_per_s": gb / dt, "step_s": dt, "compile_s": compile_s,
            "global_batch": float(gb), "live_bytes": float(live)}
