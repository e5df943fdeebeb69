"""The edges: HTTP and gRPC surfaces. They know the protocols, not torch.

They own every limit a hostile client meets (auth, body size, drain) before work is
queued, decide the protocol once (:class:`~predictor.serving.request.ImageRequest`), and
put answers back on the wire.
"""
