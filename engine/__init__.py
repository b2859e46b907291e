"""loradeck's engine: everything that touches pixels, tensors and models.

Light modules (config, dataset, buckets, plan, events, rundir, tags, prompts, cli.*)
import no heavy library at import time, so the TUI can use them directly.
"""
