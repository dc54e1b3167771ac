"""Inference: the evaluation loop, ``validate`` (open the data, make the inference model, evaluate) and
``predict``, and the bundled sets as a run used them."""
