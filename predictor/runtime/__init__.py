"""Task-agnostic execution: batcher, engines on devices, decode pool, threads.

The runtime knows batches of payloads, not protocols or tasks.
"""
