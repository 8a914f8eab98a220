"""Lets torch.compile trace the fused modules, which are instances of nn.LSTM/GRU/RNN.

Dynamo refuses to trace any instance of nn.RNN, nn.GRU or nn.LSTM unless
``torch._dynamo.config.allow_rnn`` is set (its guard against cuDNN's RNN internals, which
fused_rnn's modules do not use), so every fused module would break the graph. fused_rnn sets the
flag, and with it Dynamo traces torch.nn's own RNNs too instead of breaking the graph there
(tests/test_dynamic_shapes.py checks that they still give eager's numbers). A user can set it
back to False after importing fused_rnn; then both graph-break as torch.nn's do by default.

Importing Dynamo takes about two seconds, which a program that never compiles should not pay, so
the flag is set when Dynamo's config is first imported (by torch.compile, torch.export, ...),
through a one-shot import hook, or at once if Dynamo is already loaded.
"""
import importlib.abc
import importlib.machinery
import sys

_CONFIG = "torch._dynamo.config"


def _allow(config) -> None:
    config.allow_rnn = True


class _ExecThenAllow(importlib.abc.Loader):
    """Runs the real loader, then sets the flag on the fresh config module and retires the hook.
    Everything else (get_source, get_filename, ...) is the real loader's."""

    def __init__(self, loader, finder: "_WhenDynamoConfigLoads") -> None:
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _allow(sys.modules.get(module.__name__, module))
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)


class _WhenDynamoConfigLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _CONFIG:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _ExecThenAllow(spec.loader, self)
        return spec


def allow_fused_modules_in_dynamo() -> None:
    if _CONFIG in sys.modules:
        _allow(sys.modules[_CONFIG])
    elif not any(isinstance(finder, _WhenDynamoConfigLoads) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WhenDynamoConfigLoads())
