"""Serving: the OpenAI-compatible server, the chat CLI and Python streaming, over ``llavakit.engine``.

Layers, bottom up: ``streaming`` (Python entry points: per-conversation settings, streamed text),
``media`` / ``prepare`` (request -> checked model inputs), ``results`` / ``completions`` (engine
events -> OpenAI responses), ``app`` (HTTP), ``server_cli`` and ``chat_cli`` (the commands).
FastAPI and uvicorn are imported only by the HTTP layers.
"""
