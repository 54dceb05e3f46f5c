"""A minimal hand-written training loop of mlp_deep, per framework: the overhead baseline.

Deliberately independent of the harness (no adapter, no measure module): what a user would write.
``python -m benchmarks.handloop torch|tensorflow|jax|mxnet BATCH SECONDS`` prints samples/s as JSON.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import time

import numpy as np

HIDDEN, LAYERS, IN, OUT = 256, 8, 40, 10


def torch_loop(x: np.ndarray, y: np.ndarray, seconds: float) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    layers: list[nn.Module] = [nn.Flatten()]
    width = IN
    for _ in range(LAYERS):
        layers += [nn.Linear(width, HIDDEN), nn.ReLU()]
        width = HIDDEN
    model = nn.Sequential(*layers, nn.Linear(width, OUT))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()

    return _time(step, lambda: None, len(x), seconds)


def jax_loop(x: np.ndarray, y: np.ndarray, seconds: float) -> float:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_default_matmul_precision", "highest")
    rng = np.random.default_rng(0)
    sizes = [IN] + [HIDDEN] * LAYERS + [OUT]
    params = [
        (jnp.asarray(rng.standard_normal((a, b), dtype=np.float32) * np.sqrt(2 / a)), jnp.zeros(b, jnp.float32))
        for a, b in itertools.pairwise(sizes)
    ]
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)

    def loss_fn(p, xb, yb):  # type: ignore[no-untyped-def]
        h = xb.reshape(xb.shape[0], -1)
        for w, b in p[:-1]:
            h = jax.nn.relu(h @ w + b)
        logits = h @ p[-1][0] + p[-1][1]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=-1))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(p, v, xb, yb):  # type: ignore[no-untyped-def]
        g = jax.grad(loss_fn)(p, xb, yb)
        v = jax.tree_util.tree_map(lambda vi, gi: 0.9 * vi + gi, v, g)
        return jax.tree_util.tree_map(lambda pi, vi: pi - 0.05 * vi, p, v), v

    state = {"p": params, "v": velocity}
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    def step() -> None:
        state["p"], state["v"] = update(state["p"], state["v"], xd, yd)

    return _time(step, lambda: jax.block_until_ready(state["p"]), len(x), seconds)


def tensorflow_loop(x: np.ndarray, y: np.ndarray, seconds: float) -> float:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.experimental.enable_tensor_float_32_execution(False)
    rng = np.random.default_rng(0)
    sizes = [IN] + [HIDDEN] * LAYERS + [OUT]
    weights = []
    for a, b in itertools.pairwise(sizes):
        weights += [
            tf.Variable((rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)),
            tf.Variable(tf.zeros(b)),
        ]
    velocity = [tf.Variable(tf.zeros_like(w)) for w in weights]

    @tf.function(jit_compile=True)
    def step(xb: tf.Tensor, yb: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            h = tf.reshape(xb, [xb.shape[0], -1])
            for i in range(0, len(weights) - 2, 2):
                h = tf.nn.relu(h @ weights[i] + weights[i + 1])
            logits = h @ weights[-2] + weights[-1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
        for w, v, g in zip(weights, velocity, tape.gradient(loss, weights), strict=True):
            v.assign(0.9 * v + g)
            w.assign_sub(0.05 * v)

    xt, yt = tf.constant(x), tf.constant(y)
    return _time(lambda: step(xt, yt), lambda: None, len(x), seconds)


def mxnet_loop(x: np.ndarray, y: np.ndarray, seconds: float) -> float:
    import mxnet as mx
    from mxnet import autograd, gluon

    net = gluon.nn.HybridSequential()
    for _ in range(LAYERS):
        net.add(gluon.nn.Dense(HIDDEN, activation="relu"))
    net.add(gluon.nn.Dense(OUT))
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    xd, yd = mx.nd.array(x), mx.nd.array(y)

    def step() -> None:
        with autograd.record():
            loss = loss_fn(net(xd), yd).mean()
        loss.backward()
        trainer.step(1)

    return _time(step, mx.nd.waitall, len(x), seconds)


def _time(step, sync, batch: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    for _ in range(10):
        step()
    sync()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        steps += 10
        sync()
    return steps * batch / (time.perf_counter() - start)


if __name__ == "__main__":
    fw, batch, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 1, IN), dtype=np.float32)
    y = rng.integers(0, OUT, size=batch, dtype=np.int64)
    loop = {"torch": torch_loop, "tensorflow": tensorflow_loop, "jax": jax_loop, "mxnet": mxnet_loop}[fw]
    print(json.dumps({"samples_per_s": loop(x, y, seconds)}))
