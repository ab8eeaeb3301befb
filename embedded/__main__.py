"""``python -m nvmf_phoenix.embedded``: run the embedded target.

A target process is started again after every death, so whatever its start costs is paid
in every kill-to-ready. Compiling the package's ~40 modules costs about 0.1 s, and it is
paid at *every* start when bytecode caching is off (PYTHONDONTWRITEBYTECODE, set in many
containers and CI images to keep source trees clean). So the compiled code is cached
anyway, outside the source tree (what that setting asks for), in the user's own cache
directory: never in a directory another user could have placed code in.
"""
import os
import sys


def _cache_bytecode() -> None:
    if not sys.dont_write_bytecode or sys.pycache_prefix:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    where = os.path.join(base, "nvmf-phoenix", "pycache")
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        st = os.stat(where)
    except OSError:
        return
    if st.st_uid == os.getuid() and not st.st_mode & 0o022:
        sys.pycache_prefix = where
        sys.dont_write_bytecode = False


_cache_bytecode()

from nvmf_phoenix.embedded.app import main  # noqa: E402  (after the cache is set up)

sys.exit(main())
