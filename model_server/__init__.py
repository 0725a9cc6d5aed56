"""The embedded model server (layer 4, a front): Candor's TGI- and OpenAI-compatible HTTP server over one
base model and its LoRA adapters, with its engine, sampling, adapter loading and `candor model prepare`.

It shares no code with the chat API (``candor.service``), which reaches it only over HTTP.
"""
