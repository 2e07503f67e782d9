"""Context from other files: what the cursor needs from the rest of the project.

    select.py     `Retriever`: picks snippets (chunks of open files, definitions of imported names,
                  recent edits) within a token budget, stable while the cursor stays in a block
    outline.py    what a file holds, read with tree-sitter (spans, definitions, imports, chunks)
    workspace.py  the workspace roots, paths the model sees, where an import leads
    edits.py      where the user edited last
"""

from codestral_ls.server.retrieval.outline import chunk_spans, identifiers, jaccard, parse_file
from codestral_ls.server.retrieval.select import SOURCES, OtherDoc, Retriever, Snippet
from codestral_ls.server.retrieval.workspace import Workspace, resolve

__all__ = ["SOURCES", "OtherDoc", "Retriever", "Snippet", "Workspace", "chunk_spans", "identifiers", "jaccard",
           "parse_file", "resolve"]
