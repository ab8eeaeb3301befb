"""nvmf-phoenix: NVMe-over-Fabrics targets that come back from kill -9 as if nothing happened.

The distribution keeps one import namespace, ``nvmf_phoenix``; the repository's top-level
folders (``rpc/``, ``wire/``, ``persist/``, ``embedded/``, ``initiator/``,
``recovery/``, ``plugin/``) are mapped onto its subpackages
by ``pyproject.toml`` so that no bare ``rpc`` or ``plugin`` module lands in site-packages.
"""

__version__ = "0.1.0"
