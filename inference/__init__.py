"""Grok-1 in PyTorch: model, checkpoint formats, quantization, placement, tokenizer and engine.

This package never imports Django: the worker process and the CLI use it on their own.
"""
