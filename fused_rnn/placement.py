"""Multi-device layer placement and time-chunk pipelining for the fused_rnn modules.

``module.place_layers(devices, pipeline_chunks=k)`` (a method of every fused_rnn RNN module, which
calls :func:`place_layers` here) puts the parameters of layer ``l`` on ``devices[l]`` — any mix of
CPU and accelerator devices — and makes the forward move activations between them. With
``pipeline_chunks=k > 1`` the time axis is cut into ``k`` chunks and the layers run as a wavefront:
at step ``s`` layer ``l`` processes chunk ``s - l``, so while layer ``l + 1`` works on chunk ``j``
layer ``l`` already works on chunk ``j + 1``. CUDA work is queued asynchronously, so layers on
different GPUs (or a CPU layer next to a GPU layer) run at the same time. When every layer is on
one device there is nothing to overlap (the layers' work queues up on that device either way), so
the run is not chunked at all: chunking would only cost time (more, smaller GEMMs and op calls). The recurrent state is carried from chunk to chunk and each chunk gets the lengths
``clamp(lengths - chunk_start, 0, chunk_len)``, so the numbers are those of the unchunked run (up to
the rounding of the chunked GEMMs). Every chunk of every layer is still one
``fused_rnn.functional`` call: there is no per-step Python.

Placement rules (also in docs/placement.md):

* the input and ``hx`` may be on any device: the input moves to ``devices[0]``, each layer's slice
  of ``hx`` to that layer's device, ``lengths`` to every device once;
* the output and the final states come back on the last layer's device;
* ``state_dict`` names and shapes are unchanged (loading copies each tensor onto the device of the
  parameter it fills, so checkpoints move freely between placements);
* ``.to(device)``, ``.cuda()``, ``.cpu()`` behave as for any ``nn.Module``: every parameter goes to
  that one device, and because the layers are then no longer where the placement put them the
  placement (and its pipelining) is dropped — the module is an ordinary one-device module again.
  Conversions that keep devices (``.double()``, ``.half()``, ``.to(dtype)``, ``share_memory()``)
  keep the placement and convert each layer where it is;
* ``place_layers(None)`` undoes the placement: every layer is gathered on the first layer's device;
* parameters keep their identity when they move (``param.data`` is replaced, gradients move with
  them), but like ``.cuda()``, place the layers before building the optimizer when it has state.

Bidirectional modules can be placed but not pipelined: the reverse direction of a layer needs the
last chunk before it can produce the first, so the next layer cannot start early; ``place_layers``
refuses ``pipeline_chunks > 1`` for them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["place_layers", "chunk_bounds"]

DeviceLike = Union[torch.device, str, int]

# Chunk even when every layer is on one device (where it gains nothing): the tests set it, to
# exercise the chunking on machines with a CPU only.
_CHUNK_ON_ONE_DEVICE = False


# --- configuration ---------------------------------------------------------------------------

def _num_directions(module) -> int:
    return 2 if module.bidirectional else 1


def _layer_parameter_names(module, layer: int) -> List[str]:
    """Names of every parameter of ``layer`` (both directions), from torch's own grouping."""
    d = _num_directions(module)
    return [name for group in module._all_weights[layer * d:(layer + 1) * d] for name in group]


def _layer_device(module, layer: int) -> torch.device:
    return getattr(module, f"weight_ih_l{layer}").device


def _move_parameter(module, name: str, device: torch.device) -> None:
    """Moves one parameter (and its gradient) to ``device``, keeping the Parameter object."""
    param = module._parameters[name]
    if param.device == device:
        return
    with torch.no_grad():
        moved = param.data.to(device)
        grad = param.grad
        moved_grad = None if grad is None else grad.to(device)
        param.grad = None
        param.data = moved
        param.grad = moved_grad


def _check_chunks(pipeline_chunks) -> int:
    if isinstance(pipeline_chunks, bool) or not isinstance(pipeline_chunks, int) or pipeline_chunks < 1:
        raise ValueError(f"pipeline_chunks must be an integer >= 1, got {pipeline_chunks!r}")
    return pipeline_chunks


def _as_device(device: DeviceLike, layer: int) -> torch.device:
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"devices[{layer}] = {device!r} is not a device: {error}") from None


def place_layers(module, devices: Optional[Sequence[DeviceLike]], pipeline_chunks: int = 1):
    """Puts layer ``l`` of ``module`` on ``devices[l]``; see the module docstring. Returns module."""
    chunks = _check_chunks(pipeline_chunks)
    if devices is None:
        if chunks != 1:
            raise ValueError("pipeline_chunks > 1 needs a placement: pass one device per layer, "
                             "e.g. place_layers([device] * num_layers, pipeline_chunks=k) to chunk "
                             "on one device")
        home = _layer_device(module, 0)
        for layer in range(1, module.num_layers):
            for name in _layer_parameter_names(module, layer):
                _move_parameter(module, name, home)
        module._layer_devices = None
        module._pipeline_chunks = 1
        module._init_flat_weights()
        return module
    if isinstance(devices, (str, int, torch.device)):
        raise TypeError(f"devices must be a sequence with one device per layer (num_layers="
                        f"{module.num_layers}), got {devices!r}; to put the whole module on one "
                        f"device use .to(device)")
    devices = [_as_device(device, layer) for layer, device in enumerate(devices)]
    if len(devices) != module.num_layers:
        raise ValueError(f"devices must name one device per layer: num_layers={module.num_layers}, "
                         f"got {len(devices)} device(s)")
    if chunks > 1 and module.bidirectional:
        raise ValueError(
            "pipeline_chunks > 1 is not supported for bidirectional modules: the reverse direction "
            "of a layer needs the last time chunk before it can emit the first, so the next layer "
            "can never start early. Place the layers with pipeline_chunks=1 (the default) instead.")
    for layer, device in enumerate(devices):
        for name in _layer_parameter_names(module, layer):
            _move_parameter(module, name, device)
    module._init_flat_weights()
    # Recorded as the parameters report it ("cuda" -> "cuda:0"), so it compares with later moves.
    module._layer_devices = tuple(_layer_device(module, layer) for layer in range(module.num_layers))
    module._pipeline_chunks = chunks
    return module


def after_apply(module) -> None:
    """Called after ``nn.Module._apply`` (``.to()``, ``.cuda()``, ``.double()``, ...): keeps the
    placement when every layer is still on its device, drops it when the layers were moved."""
    placed = module._layer_devices
    if placed is None:
        return
    if tuple(_layer_device(module, layer) for layer in range(module.num_layers)) != placed:
        module._layer_devices = None
        module._pipeline_chunks = 1


def describe(module) -> str:
    """The extra_repr fragment of a placement ('' when there is none)."""
    placed = module._layer_devices
    if placed is None:
        return ""
    s = f", layer_devices=[{', '.join(str(d) for d in placed)}]"
    if module._pipeline_chunks > 1:
        s += f", pipeline_chunks={module._pipeline_chunks}"
    return s


# --- transfers ---------------------------------------------------------------------------------

class _InFlight:
    """A GPU -> CPU copy into pinned memory that is still running: ``wait()`` returns the tensor
    once the copy (recorded by a CUDA event) is done. Lets the CPU compute while the GPU copies."""

    __slots__ = ("tensor", "event")

    def __init__(self, tensor: Tensor, event) -> None:
        self.tensor, self.event = tensor, event

    def wait(self) -> Tensor:
        self.event.synchronize()
        return self.tensor


def _to(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; asynchronous where that is safe (host->CUDA, CUDA->CUDA)."""
    if t.device == device:
        return t
    asynchronous = device.type == "cuda" and t.device.type in ("cpu", "cuda")
    return t.to(device, non_blocking=asynchronous)


def _send(t: Tensor, device: torch.device):
    """Starts moving a layer's output chunk to the next layer's device. CUDA -> CPU goes into
    pinned memory without waiting (an _InFlight); everything else is _to."""
    if t.device.type == "cuda" and device.type == "cpu":
        moved = t.to(device, non_blocking=True)  # pinned destination, queued on t's stream
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(t.device))
        return _InFlight(moved, event)
    return _to(t, device)


def _receive(item) -> Tensor:
    return item.wait() if isinstance(item, _InFlight) else item


# --- the pipelined forward -------------------------------------------------------------------

def chunk_bounds(steps: int, chunks: int) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]``: ``min(chunks, steps)`` contiguous chunks covering ``range(steps)``,
    sizes differing by at most one (the longer ones first); ``[(0, steps)]`` when steps <= 1."""
    count = max(1, min(chunks, steps))
    base, extra = divmod(steps, count)
    bounds, start = [], 0
    for k in range(count):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _chunk_lengths(lengths: Optional[Tensor], bounds: List[Tuple[int, int]],
                   devices: Sequence[torch.device]) -> Dict[torch.device, List[Optional[Tensor]]]:
    """Per device, the lengths of each chunk: clamp(lengths - start, 0, stop - start). One copy of
    ``lengths`` per distinct device; the clamps run on that device (no host round trip)."""
    result: Dict[torch.device, List[Optional[Tensor]]] = {}
    for device in dict.fromkeys(devices):
        if lengths is None:
            result[device] = [None] * len(bounds)
            continue
        here = _to(lengths, device)
        if len(bounds) == 1:
            result[device] = [here]
        else:
            result[device] = [(here - start).clamp_(0, stop - start) for start, stop in bounds]
    return result


def _dropout_mask(shape: Tuple[int, ...], p: float, like: Tensor, device: torch.device) -> Tensor:
    """The variational mask of modules._variational_dropout, drawn the same way (same RNG use)."""
    return F.dropout(torch.ones(shape, dtype=like.dtype, device=device), p, training=True)


def run_layers(module, x: Tensor, state: List[Tensor], lengths: Optional[Tensor]
               ) -> Tuple[Tensor, List[Tensor]]:
    """The placed counterpart of ``_FusedRNNBase._layers``: x (T, B, I) on any device, ``state`` a
    list of (L*D, B, size) tensors on any device. Returns the output (T, B, D*P) and the final
    states (L*D, B, size), all on the last layer's device."""
    num_layers, num_directions = module.num_layers, _num_directions(module)
    # Where the parameters are now (normally the recorded placement; also right after, e.g.,
    # load_state_dict(assign=True) brought tensors from elsewhere).
    devices = [_layer_device(module, layer) for layer in range(num_layers)]
    overlap = len(set(devices)) > 1 or _CHUNK_ON_ONE_DEVICE
    bounds = chunk_bounds(x.size(0), module._pipeline_chunks if overlap else 1)
    batch = x.size(1)
    training = module.training

    # Variational masks, one per forward call and layer, drawn in the order the unplaced forward
    # draws them (input then output mask, layer by layer), each on its layer's device.
    # The recurrent-state masks come between them, one per direction, held across all chunks.
    input_masks: List[Optional[Tensor]] = []
    state_masks: List[List[Optional[Tensor]]] = []
    output_masks: List[Optional[Tensor]] = []
    out_features = num_directions * (module.proj_size or module.hidden_size)
    for layer, device in enumerate(devices):
        in_features = module.input_size if layer == 0 else out_features
        input_masks.append(_dropout_mask((1, batch, in_features), module.input_dropout, x, device)
                           if training and module.input_dropout > 0 else None)
        state_masks.append(module._state_masks(batch, x.new_empty(0, device=device)))
        output_masks.append(_dropout_mask((1, batch, out_features), module.output_dropout, x, device)
                            if training and module.output_dropout > 0 else None)

    lengths_on = _chunk_lengths(lengths, bounds, devices)
    # states[layer][direction] = [h, (c)] on the layer's device, updated chunk after chunk.
    states = [[[_to(s[layer * num_directions + d], device) for s in state]
               for d in range(num_directions)] for layer, device in enumerate(devices)]
    first = _to(x, devices[0])
    inputs: List[List[object]] = [[first[start:stop] for start, stop in bounds]]
    inputs += [[None] * len(bounds) for _ in range(1, num_layers)]
    outputs: List[Tensor] = []

    # The wavefront: at step s, layer l runs chunk s - l (layers in order, so a chunk sent to the
    # CPU is copied while the GPU layers queued before it run).
    for step in range(len(bounds) + num_layers - 1):
        for layer in range(max(0, step - len(bounds) + 1), min(num_layers, step + 1)):
            j = step - layer
            layer_input = _receive(inputs[layer][j])
            inputs[layer][j] = None  # free the chunk as soon as it is consumed
            if input_masks[layer] is not None:
                layer_input = layer_input * input_masks[layer]
            chunk_lengths = lengths_on[devices[layer]][j]
            pieces = []
            for d in range(num_directions):
                y, *last = module._run(layer_input, states[layer][d], layer, d, chunk_lengths,
                                       state_masks[layer][d])
                states[layer][d] = last
                pieces.append(y)
            y = pieces[0] if num_directions == 1 else torch.cat(pieces, dim=2)
            if output_masks[layer] is not None:
                y = y * output_masks[layer]
            if training and module.dropout > 0 and layer < num_layers - 1:
                y = F.dropout(y, module.dropout, training=True)
            if layer + 1 < num_layers:
                inputs[layer + 1][j] = _send(y, devices[layer + 1])
            else:
                outputs.append(y)

    last = devices[-1]
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
    final = [torch.stack([_to(states[layer][d][kind], last)
                          for layer in range(num_layers) for d in range(num_directions)])
             for kind in range(len(state))]
    return output, final
