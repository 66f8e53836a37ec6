"""The inference engine: one decode loop under ``Llava.generate``, the chat CLI and the server.

Modules, bottom up: ``sampling`` (per-row next-token choice), ``text`` (incremental detokenizing
with stop strings), ``kv_cache`` (the preallocated slot cache), ``forward`` (prefill chunks and
decode steps over it, optionally compiled), ``requests`` / ``rows`` (what is asked, what is being
generated), ``scheduler`` (the queue and the step loop: continuous or static batching).
"""

from llavakit.engine.config import EngineConfig
from llavakit.engine.requests import EngineClosed, QueueFull, Request, RequestListener, RequestTooLarge
from llavakit.engine.sampling import SamplingSettings
from llavakit.engine.scheduler import Engine

__all__ = ["Engine", "EngineClosed", "EngineConfig", "QueueFull", "Request", "RequestListener", "RequestTooLarge",
           "SamplingSettings"]
