"""The worker side: runs one trial in a fresh process of its framework's interpreter (a new
interpreter, or a fork of a fork server that imported the framework and nothing else).

Imports numpy, the standard library and the one framework the trial uses, nothing else (no pydantic,
Ray, MLflow or rich): it runs in every framework's interpreter, including ones without them.

- ``__main__``: the entry point, ``python -m harness.worker --request REQ.json --out RESULT.json``;
- :mod:`.trial`: build the adapter, run the trial's scenarios, collect memory and environment;
- :mod:`.scenarios`: one unit per scenario;
- :mod:`.measure`: the timing protocol, statistics, memory and the GEMM peak calibration;
- :mod:`.forkserver`: the fork server (one framework import per node and environment).
"""
