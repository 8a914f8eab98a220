"""The implementations raced against each other, and how each one is built for a case.

    fused      fused_rnn's modules (LSTM, GRU, RNN, PeepholeLSTM): the thing being measured
    fused_stepwise, fused_persistent   the same with one recurrence algorithm forced
    fused_stepwise_eager   the stepwise loop without the CUDA graphs the ops capture for half
               types by default (FUSED_RNN_STEPWISE_GRAPHS=0; CUDA)
    fused_graphed   the fused module replayed from CUDA graphs (the stepwise time loop with no
               launch overhead; the persistent kernel cannot be captured, so auto runs stepwise)
    torch.nn   torch.nn.LSTM/GRU/RNN: cuDNN on CUDA, ATen's native kernels on the CPU
    reference  fused_rnn's pure-PyTorch oracle (module backend="reference", else
               fused_rnn.functional(backend="reference"), else this package's eager step loop)
    compiled   a torch.compile'd single step called in a Python loop (opt-in: --compile)

Each contender turns a Case into a Built: a forward function x -> output sequence, the
parameters training differentiates, and which implementation actually ran (``impl``), so the
JSON says what was timed even when a fallback was taken.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import loops
from .inputs import Case, LayerWeights, layer_suffix

_STANDARD_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


@dataclass
class Built:
    forward: Callable[[Tensor], Tensor]  # x (T, B, I) -> y (T, B, directions*H)
    parameters: List[Tensor]  # differentiated in training, besides x
    impl: str
    modules: List[nn.Module] = field(default_factory=list)  # put in train()/eval() per mode
    # Environment variables set around each whole timed call (forward and, training, backward).
    environment: Dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def environment_set(self):
        previous = {name: os.environ.get(name) for name in self.environment}
        os.environ.update(self.environment)
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def set_training(self, training: bool) -> None:
        # cuDNN keeps the activations for backward only in train(); inference must be eval().
        for module in self.modules:
            module.train(training)


class Skip(Exception):
    """This contender does not run on this case; ``status`` is "n/a" (no such implementation) or
    "skipped" (exists, but not here: not importable yet, or too slow for this workload)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


# ---------------------------------------------------------------------------------------------
# Shared helpers

def fused_package():
    """fused_rnn, or raise Skip with the import error: it is written alongside this suite and
    joins the race the moment it imports."""
    try:
        return importlib.import_module("fused_rnn")
    except Exception as error:  # ImportError, or whatever a half-built package raises
        raise Skip("skipped", f"fused_rnn not importable: {type(error).__name__}: {error}") from None


def _fused_class(case: Case):
    package = fused_package()
    cls = getattr(package, case.cell.fused_class, None)
    if cls is None:
        raise Skip("skipped", f"fused_rnn has no {case.cell.fused_class}")
    return cls


def _construct(cls, case: Case, **extra) -> nn.Module:
    w = case.workload
    args = dict(num_layers=w.layers, bidirectional=w.bidirectional, **extra)
    try:
        return cls(w.I, w.H, device=case.device, dtype=case.dtype, **args)
    except TypeError as error:
        if "device" not in str(error) and "dtype" not in str(error):
            raise
        # A module without factory kwargs: build, then move.
        return cls(w.I, w.H, **args).to(device=case.device, dtype=case.dtype)


def load_weights(module: nn.Module, weights: Dict[str, Tensor]) -> None:
    """Copies the case's weights in, strictly: a module whose parameters differ is an error, not a
    silently different benchmark. Peepholes (``weight_ch_l{k}``) go to the module's one
    non-standard parameter of the same layer and direction, whatever it is called."""
    own = module.state_dict()
    mapped = {}
    for name, value in weights.items():
        if name in own:
            mapped[name] = value
            continue
        suffix = name[len("weight_ch"):]
        candidates = [k for k in own if k.endswith(suffix) and k not in weights
                      and not k.startswith(_STANDARD_WEIGHTS)]
        if len(candidates) != 1:
            raise KeyError(f"cannot place {name} in {type(module).__name__}: candidates {candidates}")
        mapped[candidates[0]] = value
    module.load_state_dict(mapped, strict=True)
    if isinstance(module, nn.RNNBase):
        # cuDNN wants its weights in one flat buffer; without this torch.nn would re-pack them on
        # every call and be timed slower than it is (fused_rnn's flatten_parameters is a no-op).
        module.flatten_parameters()


def module_forward(module: nn.Module, lengths: Optional[Tensor]) -> Callable[[Tensor], Tensor]:
    """module(x) -> y; with lengths, through the module's ``lengths=`` keyword if it has one (the
    fused fast path, no packing), else pack_padded_sequence -> module -> pad_packed_sequence,
    which is what torch.nn users must write and so is part of what they pay."""
    if lengths is None:
        return lambda x: module(x)[0]
    if "lengths" in inspect.signature(module.forward).parameters:
        return lambda x: module(x, lengths=lengths)[0]

    def packed_forward(x: Tensor) -> Tensor:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return pad_packed_sequence(module(packed)[0], total_length=x.size(0))[0]
    return packed_forward


def _leaf_weights(case: Case) -> Tuple[Callable[[int, bool], LayerWeights], List[Tensor]]:
    """Own copies of the case's weights that require grad, for the contenders without a module."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in case.weights.items()}

    def layer_weights(layer: int, reverse: bool) -> LayerWeights:
        sfx = layer_suffix(layer, reverse)
        return LayerWeights(leaves["weight_ih" + sfx], leaves["weight_hh" + sfx], leaves["bias_ih" + sfx],
                            leaves["bias_hh" + sfx], leaves.get("weight_ch" + sfx))
    return layer_weights, list(leaves.values())


def _from_sequence(case: Case, sequence: loops.Sequence, impl: str) -> Built:
    layer_weights, parameters = _leaf_weights(case)
    forward = loops.stacked(sequence, case.workload.layers, case.workload.bidirectional, layer_weights)
    lengths = case.lengths
    return Built(lambda x: forward(x, lengths), parameters, impl)


# ---------------------------------------------------------------------------------------------
# The contenders

class Contender:
    name = ""
    slow = False  # a Python loop over time: timed only on loop-friendly workloads by default
    first_call_timeout: Optional[float] = None

    def build(self, case: Case) -> Built:
        raise NotImplementedError

    def failed(self, error: BaseException) -> None:
        """Told when a call of this contender raised; most need not care."""

    def not_applicable(self, error: BaseException) -> Optional[str]:
        """Why a call that raised `error` means this contender does not apply to the case (the
        table's n/a), or None when it is a real error."""
        return None


class Fused(Contender):
    """fused_rnn with algo="auto" ("fused"), or one algorithm forced ("fused_stepwise",
    "fused_persistent"; the persistent one is n/a for the cells it does not run)."""

    def __init__(self, algo: str = "auto"):
        self.algo = algo
        self.name = "fused" if algo == "auto" else f"fused_{algo}"

    def build(self, case: Case) -> Built:
        cls = _fused_class(case)
        if self.algo == "persistent" and case.cell.name == "gru_reset_before":
            raise Skip("n/a", "the persistent algorithm does not run the reset_before GRU")
        extra = {} if self.algo == "auto" else {"algo": self.algo}
        module = _construct(cls, case, **case.cell.fused_kwargs, **extra)
        load_weights(module, case.weights)
        suffix = "" if self.algo == "auto" else f"(algo={self.algo!r})"
        return Built(module_forward(module, case.lengths), list(module.parameters()),
                     f"fused_rnn.{cls.__name__}{suffix}", [module])


    def not_applicable(self, error: BaseException) -> Optional[str]:
        # algo='persistent' refuses, with a ValueError naming why, shapes it cannot run (a W_hh
        # slice too large for shared memory): not a failure of the contender.
        if self.algo == "persistent" and isinstance(error, ValueError) \
                and "algo='persistent' cannot run" in str(error):
            return str(error)
        return None


class FusedStepwiseEager(Fused):
    """The stepwise loops launched step by step, without the CUDA graphs the ops capture and
    replay for half types by default (csrc/sequence/graphed_loop.h): FUSED_RNN_STEPWISE_GRAPHS=0
    around each whole timed call, so that the other contenders of the same run keep the
    default."""

    def __init__(self):
        super().__init__("stepwise")
        self.name = "fused_stepwise_eager"

    def build(self, case: Case) -> Built:
        if case.device.type != "cuda":
            raise Skip("n/a", "the CPU has no graphed loop to compare with")
        built = super().build(case)
        return Built(built.forward, built.parameters,
                     built.impl + " with FUSED_RNN_STEPWISE_GRAPHS=0", built.modules,
                     environment={"FUSED_RNN_STEPWISE_GRAPHS": "0"})


class _FirstOutput(nn.Module):
    """module(x)[0]: the output sequence alone, the one tensor make_graphed_callables returns."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)[0]


class _GraphedForward:
    """x -> module(x)[0] replayed from CUDA graphs, one set per (grad enabled, module.training),
    each captured on its first call (so the first-call time includes the capture): without grad,
    one graph of the forward; with grad, torch.cuda.make_graphed_callables' forward and backward
    graphs."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.graphed: Dict[Tuple[bool, bool], Callable[[Tensor], Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        key = (torch.is_grad_enabled(), self.module.training)
        if key not in self.graphed:
            self.graphed[key] = (torch.cuda.make_graphed_callables(_FirstOutput(self.module), (x,))
                                 if key[0] else self._capture_inference(x))
        return self.graphed[key](x)

    def _capture_inference(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        static_x = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (cuBLAS handles, workspaces) off the graph
            for _ in range(2):
                self.module(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = self.module(static_x)[0]

        def replay(new_x: Tensor) -> Tensor:
            static_x.copy_(new_x)
            graph.replay()
            return static_y
        return replay


class FusedGraphed(Contender):
    name = "fused_graphed"

    def build(self, case: Case) -> Built:
        if case.device.type != "cuda":
            raise Skip("n/a", "CUDA graphs need a CUDA device")
        if case.lengths is not None:
            raise Skip("n/a", "lengths are checked on the host, which a graph cannot replay")
        cls = _fused_class(case)
        module = _construct(cls, case, **case.cell.fused_kwargs)
        load_weights(module, case.weights)
        return Built(_GraphedForward(module), list(module.parameters()),
                     f"fused_rnn.{cls.__name__} in CUDA graphs", [module])


class TorchNN(Contender):
    name = "torch.nn"

    def build(self, case: Case) -> Built:
        cls = case.cell.torch_class
        if cls is None:
            raise Skip("n/a", f"torch has no {case.cell.name}")
        module = _construct(cls, case, **case.cell.torch_kwargs)
        load_weights(module, case.weights)
        on_cudnn = case.device.type == "cuda" and torch.backends.cudnn.is_available() \
            and torch.backends.cudnn.enabled
        return Built(module_forward(module, case.lengths), list(module.parameters()),
                     f"torch.nn.{cls.__name__} ({'cuDNN' if on_cudnn else 'native'})", [module])


class Reference(Contender):
    name = "reference"
    slow = True

    def build(self, case: Case) -> Built:
        try:
            return self._module_reference(case)
        except (Skip, TypeError):
            pass
        try:
            return self._functional_reference(case)
        except Skip:
            pass
        sequence = loops.step_loop(loops.STEPS[case.cell.name], case.cell.has_cell_state)
        return _from_sequence(case, sequence, "benchmarks.loops eager step loop (fused_rnn.reference unavailable)")

    @staticmethod
    def _module_reference(case: Case) -> Built:
        cls = _fused_class(case)
        module = _construct(cls, case, backend="reference", **case.cell.fused_kwargs)
        load_weights(module, case.weights)
        return Built(module_forward(module, case.lengths), list(module.parameters()),
                     f"fused_rnn.{cls.__name__}(backend='reference')", [module])

    @staticmethod
    def _functional_reference(case: Case) -> Built:
        package = fused_package()
        cell = case.cell
        if not hasattr(getattr(package, "reference", None), cell.functional):
            raise Skip("skipped", f"fused_rnn.reference has no {cell.functional}")
        function = getattr(package.functional, cell.functional)
        return _from_sequence(case, _functional_sequence(function, case),
                              f"fused_rnn.functional.{cell.functional}(backend='reference')")


def _functional_sequence(function: Callable, case: Case) -> loops.Sequence:
    """fused_rnn.functional's calling convention (see its docstring) as a one-layer Sequence."""
    cell = case.cell
    hidden = case.workload.H

    def sequence(x: Tensor, w: LayerWeights, lengths: Optional[Tensor], reverse: bool) -> Tensor:
        h0 = x.new_zeros(x.size(1), hidden)
        keywords = dict(cell.functional_kwargs, lengths=lengths, reverse=reverse, backend="reference")
        if cell.has_peephole:
            return function(x, h0, h0, w.w_ih, w.w_hh, w.w_ch, w.b_ih, w.b_hh, **keywords)[0]
        if cell.has_cell_state:
            return function(x, h0, h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, **keywords)[0]
        return function(x, h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, **keywords)[0]
    return sequence


class Compiled(Contender):
    name = "compiled"
    slow = True

    def __init__(self, first_call_timeout: Optional[float]):
        # The first call compiles; one that takes longer than this is abandoned and recorded.
        self.first_call_timeout = first_call_timeout
        self.abandoned: Optional[str] = None

    def failed(self, error: BaseException) -> None:
        # A compilation cut short by the deadline can leave inductor's global registries half
        # written, and every later compilation in this process then fails for that reason.
        if "took longer than" in str(error):
            self.abandoned = f"an earlier compilation was abandoned ({self.first_call_timeout:g} s limit)"

    def build(self, case: Case) -> Built:
        if self.abandoned:
            raise Skip("skipped", self.abandoned)
        # A fresh cache per case: dynamo's per-function cache would otherwise hit its recompile
        # limit across shapes and dtypes and fall back to eager without a word.
        torch._dynamo.reset()
        step = torch.compile(loops.STEPS[case.cell.name], dynamic=False, fullgraph=True)
        sequence = loops.step_loop(step, case.cell.has_cell_state)
        return _from_sequence(case, sequence, f"torch.compile({loops.STEPS[case.cell.name].__name__}) in a Python loop")


ORDER = ["fused", "fused_stepwise", "fused_stepwise_eager", "fused_persistent", "fused_graphed",
         "torch.nn", "reference", "compiled"]


def make_contenders(names: List[str], compile_timeout: Optional[float]) -> List[Contender]:
    available = {"fused": Fused(), "fused_stepwise": Fused("stepwise"),
                 "fused_stepwise_eager": FusedStepwiseEager(),
                 "fused_persistent": Fused("persistent"), "fused_graphed": FusedGraphed(),
                 "torch.nn": TorchNN(),
                 "reference": Reference(), "compiled": Compiled(compile_timeout)}
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown contender(s) {unknown}; known: {ORDER}")
    return [available[n] for n in ORDER if n in names]
