"""Functions triggered by realtime events: HTTP and in-process Python targets,
delivered at least once, in order per topic, with gates that can allow, deny or rewrite."""

from .config import GATE_KINDS, ON_VALUES, FunctionsConfig, Gate, Trigger, load_config
from .engine import FunctionsEngine, GateResult, RealtimeEvent
from .signing import parse_secret, sign, verify
from .targets import FunctionContext

__all__ = [
    "GATE_KINDS",
    "ON_VALUES",
    "FunctionContext",
    "FunctionsConfig",
    "FunctionsEngine",
    "Gate",
    "GateResult",
    "RealtimeEvent",
    "Trigger",
    "load_config",
    "parse_secret",
    "sign",
    "verify",
]
