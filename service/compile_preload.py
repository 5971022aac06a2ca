"""Imported once by the compile pool's fork server, before any worker forks from it.

Every compile worker needs transformers' tokenizer classes (to unpickle the tokenizer it is handed), the
compiler and lemminflect's tables: about 1.3 CPU s per process when each worker loads them itself. Loaded here,
they cost that once per server, and the workers share the pages copy-on-write. The fork server is a fresh,
single-threaded interpreter (not a fork of the serving process, which has threads and torch), so forking
from it is safe; nothing imported here starts a thread or imports torch.
"""

import transformers.tokenization_utils_tokenizers  # noqa: F401 - the tokenizer's class, for unpickling

import service.compile_pool  # noqa: F401 - the worker's initializer and task
from pc_core.constraints.words import load_dictionaries

load_dictionaries()
