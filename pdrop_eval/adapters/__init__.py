"""Evaluation-framework adapters over the shared `pdrop_eval.wrapper.LlavaRunner`.

`lmms` registers the lmms-eval models (entry-point group `lmms_eval.models`); the VLMEvalKit models
live beside it. Each module imports its framework, so import only the one you use; `lmms`
itself (lmms-eval's model listing imports it on every run) imports neither torch nor a framework.
"""
