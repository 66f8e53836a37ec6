"""Inference and serving: batched streaming generation, the OpenAI-compatible server, the chat CLI.

Layers, bottom up: ``sampling`` (per-row next-token choice), ``text`` (incremental detokenizing with
stop strings), ``decode`` (the batched KV-cache loop), ``engine`` (queue + scheduler thread),
``media`` / ``prepare`` (request -> checked model inputs), ``app`` (HTTP), ``server_cli`` and
``chat_cli`` (the commands). FastAPI and uvicorn are imported only by the HTTP layers.
"""
