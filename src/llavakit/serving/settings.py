"""Everything the operator decides about a server, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from llavakit.engine import EngineConfig
from llavakit.serving.media import MediaPolicy


@dataclass(frozen=True)
class ServerSettings:
    model_name: str  # the id clients send as "model" and /v1/models lists
    max_model_len: int  # prompt + completion tokens, visual tokens included
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 8  # image parts per request
    max_videos: int = 1  # video parts per request
    max_n: int = 8  # choices per request
    default_max_tokens: int = 512  # completion tokens when a request gives no max_tokens
    request_timeout_s: float = 300.0  # media preparation + queueing + generation
    max_request_pixels: int = 50_000_000  # decoded pixels of one request (images, and video frames)
    max_decoding_pixels: int = 100_000_000  # decoded pixels of all requests being prepared at once
    decode_workers: int = 2  # requests whose media are decoded at once (the others wait their turn)
    allowed_hosts: tuple[str, ...] | None = None  # Host header names answered (None: any)
    media: MediaPolicy = field(default_factory=MediaPolicy)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_body_bytes", "max_n", "default_max_tokens", "max_request_pixels",
                     "max_decoding_pixels", "decode_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_images < 0 or self.max_videos < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_images and max_videos must be >= 0 and request_timeout_s > 0")
        if self.max_request_pixels > self.max_decoding_pixels:
            raise ValueError(f"max_request_pixels ({self.max_request_pixels}) cannot exceed max_decoding_pixels "
                             f"({self.max_decoding_pixels}): such a request could never be decoded")
        if self.media.allow_remote and not self.media.allowed_domains:
            raise ValueError("remote media need an allow-list of domains (--allowed-media-domains)")
