"""Every fine-tuning method, listed once. `METHODS[name]` is the method object."""

from __future__ import annotations

from pydantic import ValidationError

from tunelab.errors import ConfigError
from tunelab.methods.adapter import BottleneckAdapter
from tunelab.methods.base import Method, MethodContext, MethodSettings
from tunelab.methods.bitfit import BitFit
from tunelab.methods.full import FullFineTuning
from tunelab.methods.ia3 import Ia3
from tunelab.methods.importance import ImportanceSparse
from tunelab.methods.lora import Dora, Lora
from tunelab.methods.prefix import PrefixTuning
from tunelab.methods.prompt import PromptTuning
from tunelab.methods.ptuning import Ptuning
from tunelab.methods.ulmfit import Ulmfit

METHODS: dict[str, Method] = {
    "full": FullFineTuning(),
    "lora": Lora(),
    "dora": Dora(),
    "ia3": Ia3(),
    "prefix": PrefixTuning(),
    "prompt": PromptTuning(),
    "ptuning": Ptuning(),
    "adapter": BottleneckAdapter(),
    "bitfit": BitFit(),
    "ulmfit": Ulmfit(),
    "importance": ImportanceSparse(),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def resolve_method_config(section: MethodSettings | object) -> MethodSettings:
    """Turn the config's `method:` section into the named method's own validated settings."""
    raw = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    method = get_method(raw.get("name", "lora"))
    if type(section) is method.Config:
        return section
    try:
        return method.Config.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"method.{key}: {msg} (method {method.name})") from None


__all__ = ["METHODS", "Method", "MethodContext", "MethodSettings", "get_method"]
