"""Every bound nnspec puts on untrusted specs, in one place (README's "Security model" lists them).

Each bound is checked before the work it bounds: a file's size before reading it, an expansion's
node count before building it, a tensor's element count at shape inference, before any target
allocates it.
"""
from __future__ import annotations

MAX_FILE_BYTES = 1 << 20  # one spec or block-library file
MAX_YAML_DEPTH = 64  # nesting of mappings and lists
MAX_YAML_VALUES = 200_000  # values in one file, aliases expanded
MAX_REPEAT = 100_000  # instances of one `repeat`
MAX_LOOP_STEPS = 100_000  # steps of a scan with a fixed count (`steps:`, a decoding loop)
MAX_NODES = 200_000  # nodes of all graphs after expansion
MAX_BLOCK_DEPTH = 32  # blocks inside blocks
MAX_COLLECTED_ERRORS = 100  # errors collected before a run stops looking for more
MAX_DIM = 2**31 - 1  # one concrete dim
MAX_TENSOR_ELEMENTS = 2**40  # elements of one tensor at concrete sizes
MAX_PARAMS = 2**40  # parameters and buffers of a whole program
