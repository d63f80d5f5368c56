"""The pure speculative-decoding core: sampling, verification, KV-cached model runners.

Imports torch and transformers only; no MQTT, no crypto, no sockets. Both the camera node
(drafting) and the verifier node (verification) are thin edges around these functions.
"""
