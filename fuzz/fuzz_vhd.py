"""Fuzzing harness for vhdcore's readers: every input is a hostile image file.

Each input is written to ``input.vhd`` in a work directory that also holds
``base.vhd``, a fixed parent with a known UUID, so inputs derived from the
differencing seeds reach the chain code. Then, in order: ``vhdcore.open``;
``info.describe``; ``extents()``; a read of the whole virtual disk when it
is at most :data:`READ_LIMIT` bytes, else 64 reads of 497 bytes at spread,
unaligned offsets (libvhdi's pattern: the read of a hostile image is
bounded either way); ``check.check`` (deep); and a conversion to raw.

A :class:`~vhdcore.errors.VHDError` is the expected answer to a bad input.
Anything else is a finding: another exception, a warning other than
``VHDWarning`` (numpy overflow warnings are raised as errors), a read that
disagrees with the allocation map or with the raw conversion, a check that
raises (except ``NotVHDError``: a file with no sign of a VHD is "could not
check" by design), or a clean check of an image open refuses.

Engines:

* atheris (libFuzzer), the default when it is installed::

      python fuzz/make_corpus.py /tmp/corpus
      python fuzz/fuzz_vhd.py /tmp/corpus -atheris_runs=200000 -seed=1 -max_len=65536

  libFuzzer flags apply (``-max_total_time=3600``, ``-jobs=2``, ...); a
  finding stops the run and is saved as ``crash-<sha1>`` (replay it with
  ``python fuzz/fuzz_vhd.py crash-<sha1>``). Only the Python code is
  instrumented for coverage; the Cython kernels run uninstrumented (their
  input checks are Python-visible, and ``make test-debug`` runs them with
  bounds checks on).
* a seeded random-mutation loop, with ``--mutate`` (or when atheris is
  missing)::

      python fuzz/fuzz_vhd.py --mutate /tmp/corpus -runs=20000 -seed=1

Environment: ``VHDCORE_FUZZ_WORKDIR`` (default: a new temporary
directory), and ``VHDCORE_BACKEND`` as for the library. The smoke test
(tests/test_fuzz_smoke.py) runs both engines briefly with a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import uuid as uuidlib
import warnings

try:
    import atheris
except ImportError:  # pragma: no cover - the fallback engine still works
    atheris = None


def _import_vhdcore():
    global vhdcore, errors, describe, check_module, convert_module, VHDWarning
    import importlib

    import vhdcore
    from vhdcore import errors
    from vhdcore.formats.vhd.image import VHDWarning
    from vhdcore.formats.vhd.info import describe

    def optional(name):
        try:
            return importlib.import_module(name)
        except ImportError:
            return None

    check_module = optional("vhdcore.formats.vhd.check")
    convert_module = optional("vhdcore.ops.convert")


READ_LIMIT = 4 << 20
CONVERT_LIMIT = 1 << 20
BASE_UUID = uuidlib.UUID("0f0f0f0f-1111-2222-3333-444455556666")
BASE_SIZE = 64 * 1024
BASE_TIMESTAMP = 946684800 + 86400 * 9000


def make_base(path):
    """The fixed parent every differencing seed was made from (deterministic)."""
    import vhdcore

    with vhdcore.create(path, BASE_SIZE, type="fixed", uuid=BASE_UUID,
                        timestamp=BASE_TIMESTAMP, overwrite=True) as image:
        image.write(0, bytes(range(256)) * (BASE_SIZE // 256))


class Finding(AssertionError):
    """A reader answered a hostile image with something other than a VHDError."""


class Harness:
    def __init__(self, workdir=None):
        self.workdir = workdir or os.environ.get("VHDCORE_FUZZ_WORKDIR") or tempfile.mkdtemp(
            prefix="vhdcore-fuzz-")
        os.makedirs(self.workdir, exist_ok=True)
        self.input = os.path.join(self.workdir, "input.vhd")
        self.output = os.path.join(self.workdir, "output.raw")
        if not os.path.exists(os.path.join(self.workdir, "base.vhd")):
            make_base(os.path.join(self.workdir, "base.vhd"))
        self.stats = {"inputs": 0, "opened": 0, "refused": 0}

    def run(self, data: bytes) -> None:
        with open(self.input, "wb") as f:
            f.write(data)
        self.stats["inputs"] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", VHDWarning)
            content = self._read()
            self._check(content)
            if content is not None and len(content) <= CONVERT_LIMIT:
                self._convert(content)

    def _read(self):
        try:
            image = vhdcore.open(self.input)
        except errors.VHDError:
            self.stats["refused"] += 1
            return None
        self.stats["opened"] += 1
        try:
            with image:
                json.dumps(describe(image))
                extents = image.extents()
                size = image.virtual_size
                if sum(e.length for e in extents) != size:
                    raise Finding(f"extents cover {sum(e.length for e in extents)} of {size} bytes")
                if size > READ_LIMIT:
                    rng = random.Random(size)
                    for _ in range(64):
                        image.read(rng.randrange(0, max(1, size - 497)), min(497, size))
                    return None
                content = image.read(0, size)
                rebuilt = bytearray(size)
                for e in extents:
                    if e.state != "zero":
                        member = image.chain[e.depth]
                        rebuilt[e.offset : e.end] = member._file.pread(e.file_offset, e.length)
                if bytes(rebuilt) != content:
                    raise Finding("read and extents disagree")
                return content
        except errors.VHDError:
            return None

    def _check(self, content):
        if check_module is None:
            return
        try:
            report = check_module.check(self.input, deep=True)
        except getattr(errors, "NotVHDError", ()):
            return  # no VHD at all (a raw disk, another format): nothing to check
        json.dumps(report.to_dict())

    def _convert(self, content):
        if convert_module is None:
            return
        try:
            convert_module.convert(self.input, self.output, out_format="raw", force=True,
                                   fsync=False)
        except errors.VHDError:
            return
        with open(self.output, "rb") as f:
            if f.read() != content:
                raise Finding("conversion to raw and read disagree")


# ---------------------------------------------------------------------------
# the fallback engine: seeded random mutations of the corpus


_INTERESTING = [0, 1, 0x1FF, 0x200, 0x201, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF,
                0xFF000000, 0x10000, 0x1000, 0x600]


def mutate(data: bytes, rng: random.Random, corpus) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(8)
        if not buf:
            buf = bytearray(rng.choice(corpus))
        n = len(buf)
        # Most VHD metadata sits in the first 2 KiB and the last 512 bytes.
        hot = rng.choice([rng.randrange(n), rng.randrange(min(n, 2048)),
                          max(0, n - 512 + rng.randrange(512))])
        hot = min(hot, n - 1)
        if choice == 0:
            buf[hot] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buf[hot] = rng.randrange(256)
        elif choice == 2 and n >= 4:
            at = min(hot - hot % 4, n - 4)
            buf[at : at + 4] = rng.choice(_INTERESTING).to_bytes(4, "big")
        elif choice == 3 and n >= 8:
            at = min(hot - hot % 8, n - 8)
            value = rng.choice([0, 512, 1 << 63, (1 << 64) - 1, n, max(0, n - 512)])
            buf[at : at + 8] = value.to_bytes(8, "big")
        elif choice == 4:
            del buf[rng.randrange(n):]
        elif choice == 5:
            buf += bytes(rng.choice([1, 511, 512, 4096]))
        elif choice == 6:
            other = rng.choice(corpus)
            if other:
                start = rng.randrange(len(other))
                piece = other[start : start + rng.randint(1, 1024)]
                buf[hot : hot + len(piece)] = piece
        else:
            at = n - 512 if n >= 512 else 0
            buf[at : at + 512] = buf[:512]  # copy footer copy over primary, or back
    return bytes(buf)


def _load_corpus(paths):
    corpus = []
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                with open(os.path.join(path, name), "rb") as f:
                    corpus.append(f.read())
        elif os.path.exists(path):
            with open(path, "rb") as f:
                corpus.append(f.read())
    return corpus


def mutation_loop(argv):
    runs, seed, paths = 1000, 0, []
    for arg in argv:
        if arg.startswith("-runs=") or arg.startswith("-atheris_runs="):
            runs = int(arg.split("=", 1)[1])
        elif arg.startswith("-seed="):
            seed = int(arg.split("=", 1)[1])
        elif not arg.startswith("-"):
            paths.append(arg)
    corpus = _load_corpus(paths) or [b"conectix" + bytes(504)]
    harness = Harness()
    rng = random.Random(seed)
    for index in range(runs):
        data = mutate(rng.choice(corpus), rng, corpus)
        try:
            harness.run(data)
        except BaseException:
            name = "crash-" + hashlib.sha1(data).hexdigest()
            with open(name, "wb") as f:
                f.write(data)
            print(f"finding at run {index}; input saved as {name}", file=sys.stderr)
            raise
    print(f"mutation loop: {runs} runs, seed {seed}: {harness.stats}; no findings")


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    use_atheris = atheris is not None and "--mutate" not in argv
    argv = [a for a in argv if a != "--mutate"]
    if not use_atheris:
        _import_vhdcore()
        mutation_loop(argv[1:])
        return
    with atheris.instrument_imports(include=["vhdcore"]):
        _import_vhdcore()
    harness = Harness()
    atheris.Setup(argv, harness.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
