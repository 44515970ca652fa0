"""The script nbdkit loads for uzram: ``nbdkit python "$(uzram plugin-path)" size=1G ...``.

nbdkit embeds Debian's python3 and loads this file by its path, as a script.  It makes uzram
importable first, then binds the plugin's callbacks (uzram.nbd.plugin) into this script's
namespace, where nbdkit looks them up:

- the directory that holds the uzram package: a checkout's root, or the site-packages of
  the virtual environment uzram is installed in (with its .pth files);
- the site-packages of $UZRAM_VENV, or else of the .venv next to a checkout, for the
  packages uzram needs (numpy, zmq, lz4, zstandard).

The workers then run on that environment's python.  Nothing here may import anything but
the standard library before the paths are set.
"""

import glob
import os
import site
import sys


def load(namespace):
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(package_dir)                 # holds uzram/
    venvs = [os.environ.get("UZRAM_VENV"), os.path.join(root, ".venv")]
    # installed: root is VENV/lib/python3.X/site-packages
    if os.path.basename(root) == "site-packages":
        venvs.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(root))))
    venv = None
    for candidate in venvs:
        if candidate and glob.glob(os.path.join(candidate, "lib", "python3*", "site-packages")):
            venv = candidate
            break
    if venv is not None:
        for sp in glob.glob(os.path.join(venv, "lib", "python3*", "site-packages")):
            site.addsitedir(sp)
    if root not in sys.path:
        sys.path.insert(0, root)
    from uzram.nbd import plugin
    if venv is not None and os.path.exists(os.path.join(venv, "bin", "python")):
        plugin.DEFAULT_PYTHON = os.path.join(venv, "bin", "python")
    plugin.bind(namespace)


if __name__ != "uzram.nbd.nbdkit_plugin":      # loaded by nbdkit, as a script
    load(globals())
