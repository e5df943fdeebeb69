"""What is served: the models, how they are built, and the repository.

The repository (:mod:`predictor.serving.repository`) is the only thing that creates or
destroys models (:class:`~predictor.serving.model.ImageModel`).
"""
