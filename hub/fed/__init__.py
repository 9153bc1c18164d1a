"""Federated rounds: the protocol every aggregator plugin shares (see docs/federated.md).

A round lives in a shared directory; the key holder signs its manifest, each
team signs its contribution, the aggregator sums chunk by chunk and the key
holder decrypts the sum. What a chunk is (a CKKS ciphertext, or float64 bytes
in the clear) is the only thing an aggregator plugin provides: a *codec*
(``scheme``, ``encrypted``, ``keygen``, ``open``, ``encrypt``, ``add``,
``decrypt``), wrapped by :class:`hub.fed.aggregator.RoundAggregator`.
numpy, torch and safetensors are imported inside the functions that need them.
"""
