"""The embedded testbed: a synthetic knowledge world and a tiny Llama pretrained on it on the CPU.

A plugin (:mod:`kaft.testbed.plugin`, the ``kaft.plugins`` entry point): kaft never imports this package, the
registries do when a config names ``source: testbed``. Layers, each importing only those above it:

* :mod:`~kaft.testbed.config` - the defaults and :func:`~kaft.testbed.config.resolve_config`;
* :mod:`~kaft.testbed.templates` (relations, templates, made-up words) and :mod:`~kaft.testbed.worldgen` (the
  seeded draws that fill them in);
* :mod:`~kaft.testbed.world` - :func:`~kaft.testbed.world.build_world` -> :class:`~kaft.testbed.world.World` with
  ``splits()`` / ``split(name)`` (``train``, ``test_id``, ``test_ood``: lists of :class:`kaft.items.MCItem`);
* :mod:`~kaft.testbed.sentences` - the splits' free-form responses, built from the world's templates;
* :mod:`~kaft.testbed.tokenizer`, :mod:`~kaft.testbed.binding` (the built-in heads), :mod:`~kaft.testbed.accuracy`,
  :mod:`~kaft.testbed.release` (the released readout), :mod:`~kaft.testbed.cpu`;
* :mod:`~kaft.testbed.model` - :func:`~kaft.testbed.model.build_model` (``cfg``, ``cache_root``) -> directory for
  ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``, built on first use (about a minute on 2 CPU cores)
  and cached;
* ``python -m kaft.testbed.report`` prints how well the model knows its world; ``python -m kaft.testbed.matrix``
  checks it over seeds, precisions and CPU kernel families.

Torch is imported inside functions only, so loading the world (or this plugin) never imports it.
"""
