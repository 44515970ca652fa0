"""The import layers, as uzram/__init__.py writes them down: every import of every module
(function-level ones included) goes to its own layer or one below, and within a layer to
its own group or one before it.  The README says the same, word for word.  The bench
package (uzram/tools/bench) writes down the order of its own modules the same way."""

import ast
import os
import re

import pytest

import uzram

PACKAGE = os.path.dirname(os.path.abspath(uzram.__file__))
README = os.path.join(os.path.dirname(PACKAGE), "README.md")
# the layers whose modules live in a subpackage of that name; the others are top-level modules
SUBPACKAGES = {"core", "kcompressd", "nbd", "host", "tools", "cli"}


def parse_layers(text, first="core"):
    """[(layer, [[module, ...], ...])] from the indented block of a docstring or the README
    that begins with layer ``first``."""
    block = re.search(rf"\n( {{4}}{first} [^\n]*(?:\n {{4}}[^\n]*)*)", text).group(1)
    layers, current = [], None
    for line in block.splitlines():
        m = re.match(r" {4}(\w+)\s{2,}(.*)", line)
        if m:
            current = (m.group(1), m.group(2))
            layers.append(current)
        else:
            layers[-1] = (current[0], current[1] + " " + line.strip())
            current = layers[-1]
    out = []
    for name, rest in layers:
        rest = re.sub(r"\(.*?\)", "", rest)
        groups = [[m.strip() for m in g.split(",") if m.strip()] for g in rest.split("->")]
        out.append((name, groups))
    return out


LAYERS = parse_layers(uzram.__doc__)
BENCH = os.path.join(PACKAGE, "tools", "bench", "__init__.py")
with open(BENCH) as _f:
    [(_, BENCH_GROUPS)] = parse_layers(ast.get_docstring(ast.parse(_f.read())), first="bench")


def rank_of(dotted):
    """(layer index, group index) of module ``uzram.X...``, or None for the package itself."""
    parts = dotted.split(".")[1:]
    if not parts or parts[0] in ("__main__",):
        return None
    for i, (layer, groups) in enumerate(LAYERS):
        if layer in SUBPACKAGES and parts[0] == layer:
            if layer == "cli":
                return (i, 0)
            if len(parts) == 1:
                return (i, -1)        # the subpackage's __init__: docstring only
            for j, group in enumerate(groups):
                if parts[1] in group:
                    if parts[:2] == ["tools", "bench"]:
                        return (i, j) + bench_rank(dotted, parts[2:])
                    return (i, j)
            raise AssertionError(f"{dotted} is not in the layers of uzram/__init__.py")
        if layer not in SUBPACKAGES:
            for j, group in enumerate(groups):
                if parts[0] in group:
                    return (i, j)
    raise AssertionError(f"{dotted} is in no layer of uzram/__init__.py")


def bench_rank(dotted, rest):
    """(group,) of a module of the bench package in its own order; its __init__, which
    re-exports them, comes after them all."""
    if not rest:
        return (len(BENCH_GROUPS),)
    for k, group in enumerate(BENCH_GROUPS):
        if rest[0] in group:
            return (k,)
    raise AssertionError(f"{dotted} is not in the order of uzram/tools/bench/__init__.py")


def modules():
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield path, rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path, dotted):
    """The uzram modules ``path`` imports (absolute names; names imported from a package
    count as its modules where they are ones)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("uzram")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("uzram"):
                continue
            subs = [f"{mod}.{a.name}" for a in node.names]
            real = [s for s in subs if os.path.exists(os.path.join(os.path.dirname(PACKAGE), *s.split("."))
                                                      + ".py") or os.path.isdir(
                os.path.join(os.path.dirname(PACKAGE), *s.split(".")))]
            out += real if real else [mod]
    return out


def check(path, dotted):
    here = rank_of(dotted)
    bad = []
    for target in imports_of(path, dotted):
        there = rank_of(target)
        if here is None or there is None:
            continue
        if there[0] > here[0] or (there[0] == here[0] and there[1] > here[1] and here[1] >= 0):
            bad.append(f"{dotted} imports {target}, a layer above it")
        elif len(here) == len(there) == 3 and here[1] == there[1] and there[2] > here[2]:
            bad.append(f"{dotted} imports {target}, a module after it in the bench's order")
    return bad


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    bad = []
    for path, dotted in modules():
        bad += check(path, dotted)
    assert not bad, "\n".join(bad)


def test_the_worker_imports_no_store():
    for target in imports_of(os.path.join(PACKAGE, "kcompressd", "worker.py"), "uzram.kcompressd.worker"):
        assert target in {"uzram.core.codecs", "uzram.core.constants", "uzram.core.errors", "uzram.core.shm",
                          "uzram.kcompressd.protocol"}, target


def test_the_readme_says_the_same():
    with open(README) as f:
        assert parse_layers(f.read()) == LAYERS


@pytest.mark.parametrize("source, target", [
    ("uzram.core.store", "from uzram.nbd import control"),           # core below nbd
    ("uzram.core.arena", "from .store import PageStore"),            # a later group of core
    ("uzram.kcompressd.pool", "from uzram.tools import probe"),
    ("uzram.tools.bench.dataset", "from .run import run_bench"),      # a later module of the bench
    ("uzram.tools.bench.measure", "from uzram.tools.bench import BenchError"),   # the re-exporting package
])
def test_a_wrong_way_import_is_caught(tmp_path, source, target):
    path = os.path.join(os.path.dirname(PACKAGE), *source.split(".")) + ".py"
    fake = tmp_path / "module.py"
    with open(path) as f:
        fake.write_text(f.read() + "\n" + target + "\n")
    assert check(str(path), source) == []                      # as it is: fine
    assert check(str(fake), source), f"{target!r} in {source} was not caught"   # read as that module
