"""The training step captured whole as a CUDA graph and replayed (the default on CUDA).

A batch-64 step of these models is launch-bound on a modern GPU: Python and kernel launches,
not arithmetic, set the pace. :class:`StepGraph` records the engine's own step function
(forward, backward, the hooks' regulariser gradient and masks, the SGD update, the on-device
loss/accuracy sums) once and replays it for every full batch:

- per-epoch values (lr, ART's alpha) are 0-d device tensors the graph reads
  (:meth:`Trainer.scalar`), set between replays;
- the batch is copied into static input tensors; the epoch's last, smaller batch, and any
  iteration a hook wants on the host (``Hooks.eager_iteration``, e.g. RigL's mask update),
  run the same step eagerly on the same parameter, gradient and momentum tensors;
- hooks opt in per class (``capture_safe = True`` in the class body) and keep host work in
  ``after_iteration`` / ``on_epoch_start``; a change of ``Hooks.graph_key()`` (e.g. AC/DC
  switching its mask) records the step again.

Nothing inside the step may read a device value on the host. :class:`NoHostSync` checks
that on any device (tests run the captured step's code eagerly on CPU inside it, mode
"emulate"), and the CUDA tests use ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["WARMUP_STEPS", "HostSyncError", "NoHostSync", "StepGraph", "sgd_update_"]

WARMUP_STEPS = 3  # eager steps (on a side stream) before the first capture

_aten = torch.ops.aten
# Ops whose result needs a device value on the host: scalar reads, data-dependent shapes.
_SYNC_OPS = {
    _aten._local_scalar_dense,
    _aten.item,
    _aten.is_nonzero,
    _aten.equal,
    _aten.nonzero,
    _aten.nonzero_static,
    _aten.masked_select,
    _aten._unique2,
    _aten.unique_dim,
    _aten.unique_consecutive,
}


class HostSyncError(RuntimeError):
    """A step that is to be captured read a device value on the host."""


class NoHostSync(TorchDispatchMode):
    """Raises :class:`HostSyncError` on any op that reads a tensor value on the host (``.item()``,
    ``float(t)``, ``if t:``, boolean-mask indexing, ``nonzero`` ...), on CPU as on CUDA."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        if func.overloadpacket in _SYNC_OPS or func in _SYNC_OPS:
            raise HostSyncError(
                f"{func} reads a device value on the host inside a step meant for a CUDA "
                "graph; keep such work in a hook's after_iteration / on_epoch_start"
            )
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def sgd_update_(optimizer: torch.optim.Optimizer, lr: Tensor) -> None:
    """torch.optim.SGD's update (momentum, weight decay, no dampening or Nesterov) with the
    learning rate read from a device tensor, on the optimizer's own momentum buffers.

    Equal to ``optimizer.step()`` up to float rounding (lr multiplies in a separate op);
    the momentum buffers must exist (the warm-up steps create them).
    """
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        wd, momentum = group["weight_decay"], group["momentum"]
        if wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if momentum != 0:
            bufs = [optimizer.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(params, torch._foreach_mul(grads, -lr))


def graphable_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """True for the plain torch.optim.SGD that :func:`sgd_update_` reproduces."""
    if type(optimizer) is not torch.optim.SGD:
        return False
    return all(not g.get("nesterov") and not g.get("dampening") and not g.get("maximize")
               for g in optimizer.param_groups)


class StepGraph:
    """Runs the trainer's step function for each batch: replayed from a CUDA graph where it
    can be ("graph"), or eagerly with the same capture semantics and a host-sync check on
    any device ("emulate", for tests on CPU)."""

    def __init__(self, step: Callable[[Tensor, Tensor, Any, bool], None], mode: str,
                 zero_grads: Callable[[bool], None]) -> None:
        if mode not in ("graph", "emulate"):
            raise ValueError(f"mode must be graph or emulate, got {mode!r}")
        self.step, self.mode, self.zero_grads = step, mode, zero_grads
        self.graph: Any = None
        self.key: Hashable = None
        self.static: tuple[Tensor, Tensor] | None = None
        self.warm = 0
        self.full_shape: tuple[int, ...] | None = None
        self.captures = 0
        self.replays = 0
        self.eager = 0

    def run(self, x: Tensor, y: Tensor, hooks: Any, eager: bool) -> None:
        """One iteration on batch (x, y); ``eager`` forces the eager step (hook's request)."""
        if self.full_shape is None:
            self.full_shape = tuple(x.shape)
        if eager or tuple(x.shape) != self.full_shape:
            self._eager(x, y, hooks)
            return
        if self.warm < WARMUP_STEPS:  # plain eager steps: optimizer state, cuDNN/cuBLAS setup
            self.warm += 1
            if self.mode == "graph":
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._eager(x, y, hooks)
                torch.cuda.current_stream().wait_stream(side)
            else:
                self._eager(x, y, hooks)
            return
        if self.mode == "emulate":  # the captured step's code, run eagerly and checked
            self.zero_grads(False)
            with NoHostSync():
                self.step(x, y, hooks, True)
            self.replays += 1
            return
        key = hooks.graph_key()
        if self.graph is not None and key == self.key:
            assert self.static is not None
            self.static[0].copy_(x, non_blocking=True)
            self.static[1].copy_(y, non_blocking=True)
            self.graph.replay()
            self.replays += 1
            return
        self._capture(x, y, hooks, key)

    def _eager(self, x: Tensor, y: Tensor, hooks: Any) -> None:
        """The same step, eagerly: before the warm-up ends a plain step; after it, with the
        captured step's semantics (device lr, and the graph's gradient tensors once a graph
        owns them)."""
        warmed = self.warm >= WARMUP_STEPS
        self.zero_grads(not (warmed and (self.graph is not None or self.mode == "emulate")))
        self.step(x, y, hooks, warmed)
        self.eager += 1

    def _capture(self, x: Tensor, y: Tensor, hooks: Any, key: Hashable) -> None:
        self.graph = None  # frees the previous graph's memory pool
        self.static = (x.clone(), y.clone())
        graph = torch.cuda.CUDAGraph()
        self.zero_grads(True)  # gradients are allocated inside the graph, static from now on
        with torch.cuda.graph(graph):
            self.step(self.static[0], self.static[1], hooks, True)
        graph.replay()  # capture records only: this runs the current batch
        self.graph, self.key = graph, key
        self.captures += 1
        self.replays += 1

    def stats(self) -> dict[str, int]:
        """Captures, replays and eager steps so far (for metrics and benchmarks)."""
        return {"captures": self.captures, "replays": self.replays, "eager": self.eager}
