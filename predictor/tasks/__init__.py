"""Tasks: what each kind of model does with images, batches and answers.

:mod:`predictor.tasks.registry` picks the task a manifest names; adding a task
(segmentation, say) is one new module registered there.
"""
