"""Grok-1 in PyTorch, for inference. This package never imports Django: the worker process and the
CLI use it on their own.

    config.py      a checkpoint's config.json, without torch (the web tier reads it too)
    model.py       the model and GrokConfig
    quantize.py    int8 / nf4 / float projections, swapped into the model
    released.py    xAI's released ckpt-0/ format, read safely
    convert.py     released -> the project's safetensors shards
    checkpoint.py  `load_model`: either format into a ready model
    placement.py   spreading the layers over GPUs, CPU and disk
    tokenizer.py   SentencePiece, and streaming detokenisation
    engine.py      continuous batching and sampling
    loop.py        `ServingLoop`: jobs in, batched text out
    bench.py       tokens/s and weight bandwidth
    tiny.py        the seeded demo checkpoint
    cli.py         `python -m inference ...`
"""
