"""Tests of the vLLM and SGLang adapters."""
