"""nvmf_phoenix.plugin: where users meet nvmf-phoenix.

``spdk-rpc --plugin nvmf_phoenix.plugin <command>`` loads this package and calls
:func:`spdk_rpc_plugin_initialize` (see :mod:`.spdk_plugin` for the commands); the
``nvmf-phoenix`` command line is :mod:`.cli`.
"""
from nvmf_phoenix.plugin.spdk_plugin import spdk_rpc_plugin_initialize

__all__ = ["spdk_rpc_plugin_initialize"]
