"""The embedded testbed: a synthetic knowledge world and a tiny Llama pretrained on it on the CPU.

* :func:`kaft.testbed.world.build_world` (``cfg`` = the ``testbed`` config mapping) -> :class:`World` with
  ``splits()`` / ``split(name)`` (``train``, ``test_id``, ``test_ood``: lists of :class:`kaft.data.MCItem`);
* :func:`kaft.testbed.model.build_model` (``cfg``, ``cache_root``) -> directory for ``AutoModelForCausalLM`` /
  ``AutoTokenizer.from_pretrained``, built on first use (about a minute on 2 CPU cores) and cached;
* ``python -m kaft.testbed.report`` prints how well the model knows its world.

Submodules are imported lazily so that loading the world never imports torch.
"""
