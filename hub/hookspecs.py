"""Hook specifications: every extension point of qlora-hub.

Registration hooks follow one pattern, ``register_<things>(register)``: the
host passes a ``register`` callback, the plugin calls it once per object.
The callback checks the object against its protocol (``hub.types``) and its
name, and refuses a name another plugin already registered.

Lifecycle hooks are called for every implementation, in pluggy's order
(last registered first, ``tryfirst``/``trylast`` respected), except
``key_provider``, which is ``firstresult``.

docs/hooks.md has one section per hook with its exact signature; a test
fails when a hook here is missing there.
"""

from hub import hookspec


@hookspec
def register_quantizers(register):
    """Register quantizers: ways to load a base model in low precision.

    :param register: callback ``register(quantizer)``; ``quantizer`` satisfies
        :class:`hub.types.Quantizer` and its ``name`` is unique across plugins.
    :return: ignored.
    """


@hookspec
def register_adapters(register):
    """Register adapter methods: ways to attach, save and load trainable adapters.

    :param register: callback ``register(method)``; ``method`` satisfies
        :class:`hub.types.AdapterMethod` and its ``name`` is unique across plugins.
    :return: ignored.
    """


@hookspec
def register_optimizers(register):
    """Register optimizer factories used by ``qlora-hub train``.

    :param register: callback ``register(factory)``; ``factory`` satisfies
        :class:`hub.types.OptimizerFactory` and its ``name`` is unique across plugins.
    :return: ignored.
    """


@hookspec
def register_storage(register):
    """Register storage backends that keep adapter versions.

    :param register: callback ``register(backend_class)``; the class satisfies
        :class:`hub.types.StorageBackend` (it is instantiated per data
        directory) and its ``name`` is unique across plugins.
    :return: ignored.
    """


@hookspec
def register_aggregators(register):
    """Register aggregators that merge adapters contributed by several teams.

    :param register: callback ``register(aggregator)``; ``aggregator``
        satisfies :class:`hub.types.Aggregator` and its ``name`` is unique
        across plugins.
    :return: ignored.
    """


@hookspec
def register_settings(register):
    """Declare the plugin's own settings table (``[mytable]`` in ``qlora-hub.toml``).

    :param register: callback ``register(table, keys)``; ``table`` is a new
        identifier (not a core table, not another plugin's) and ``keys`` maps
        each key to ``(default, type)``, ``type`` one of ``bool``, ``int``,
        ``float``, ``str``, ``list``. The keys then load like the core's: from
        the file (``--config`` included), from ``QLORA_HUB_<TABLE>_<KEY>``, and
        show in ``qlora-hub config``; storage backends receive them in the
        ``settings`` they are built with.
    :return: ignored.
    """


@hookspec
def register_blob_stores(register):
    """Register blob stores: URL schemes where storage backends keep opaque objects.

    :param register: callback ``register(scheme, factory)``; ``scheme`` is a
        lower-case URL scheme (``"s3"``), unique across plugins, and
        ``factory(url, settings)`` returns a :class:`hub.blobs.BlobStore` for
        ``vault.blob_url = "scheme://..."`` (``settings`` know every plugin's table).
    :return: ignored.
    """


@hookspec
def register_routes(register):
    """Register extra HTTP route handlers mounted by ``qlora-hub serve``.

    :param register: callback ``register(handler)``; ``handler`` is a
        Litestar route handler or ``Router`` (anything ``Litestar(route_handlers=...)``
        accepts). Its paths must not collide with the server's own.
    :return: ignored.
    """


@hookspec
def register_engines(register):
    """Register execution engines: what runs the base model behind ``qlora-hub serve``.

    :param register: callback ``register(name, factory)``; ``name`` is an identifier
        unique across plugins (``serve --engine NAME``, setting ``serve.engine``) and
        ``factory(hub, settings, source)`` returns an :class:`hub.engines.Engine`
        (not yet started) for the base ``source`` (a checkpoint or Hugging
        Face directory, or a loaded :class:`hub.models.LoadedBase`). Import heavy
        libraries inside the factory.
    :return: ignored.
    """


@hookspec
def register_commands(cli):
    """Add command-line commands.

    :param cli: the root ``click.Group`` of ``qlora-hub``. Add top-level
        commands with ``@cli.command()``, or extend a built-in group such as
        ``cli.commands["bench"]`` or ``cli.commands["team"]``. Import heavy
        libraries inside the command function, not at module level, so
        ``qlora-hub --help`` stays fast.
    :return: ignored.
    """


@hookspec
def validate_adapter(adapter):
    """Policy check on an adapter before it is stored or loaded.

    Called for every implementation, on every push, import, pull and export
    (by :mod:`hub.adapters`, whatever the backend); any problem vetoes the
    adapter. Raising, or returning anything but ``None`` or a list of
    strings, is an error naming the plugin.

    :param adapter: a :class:`hub.types.AdapterPayload` (name, version, files
        as bytes, manifest). Treat it as read-only.
    :return: ``None`` or an empty list to accept; a list of one-line problem
        descriptions (strings) to refuse.
    """


@hookspec
def adapter_published(ref, team, manifest):
    """Notification: an adapter version was stored.

    :param ref: the :class:`hub.types.AdapterRef` of the new version.
    :param team: name of the team that published it.
    :param manifest: what was published, a ``dict`` (read-only): ``name``,
        ``version``, ``publisher``, ``base_fingerprint``, ``files`` (sha256 of
        each file) and ``metadata``. Fired once per version, by the host.
    :return: ignored.
    """


@hookspec
def adapter_loaded(ref, team, where):
    """Notification: an adapter version was read from storage into memory and validated.

    Fired once per pull, by the host (:mod:`hub.adapters`), never by a backend.

    :param ref: the :class:`hub.types.AdapterRef` that was loaded.
    :param team: name of the team on whose behalf it was loaded.
    :param where: short label of the consumer, e.g. ``"server"``, ``"cli"``, ``"fed"``,
        ``"export"``, ``"verify"``.
    :return: ignored.
    """


@hookspec
def training_event(event):
    """Notification: a training step or evaluation produced metrics.

    :param event: ``dict`` with at least ``"kind"`` (``"step"``, ``"eval"``,
        ``"end"``) and ``"step"``; step events carry ``"loss"`` and
        ``"learning_rate"``, eval events ``"eval_loss"``.
    :return: ignored.
    """


@hookspec(firstresult=True)
def key_provider(team, purpose):
    """Supply a team's private key bundle from somewhere other than its key file.

    This hook is ``firstresult``: the first implementation that returns
    something other than ``None`` wins and the rest are not called.

    :param team: the team name whose private keys are needed.
    :param purpose: why they are needed: ``"decrypt"``, ``"sign"`` or ``"fed"``.
    :return: the private key bundle as ``bytes`` (the JSON format documented
        in docs/security.md), or ``None`` to fall through to the next provider
        and finally to the passphrase-protected key file.
    """
