# Parses Julia files with tree-sitter's Julia grammar and reports syntax
# errors and missing tokens with their lines; exit status 1 when any.
# Run by tests/julia_binding.rs where python3 has `tree_sitter_julia`
# (PyPI: tree-sitter, tree-sitter-julia).
import sys

import tree_sitter_julia
from tree_sitter import Language, Parser

parser = Parser(Language(tree_sitter_julia.language()))
problems = 0


def walk(path, src, node):
    global problems
    if node.type == "ERROR" or node.is_missing:
        problems += 1
        what = f"missing `{node.type}`" if node.is_missing else "syntax error"
        text = src[node.start_byte:node.end_byte][:60].decode("utf-8", "replace")
        print(f"{path}:{node.start_point[0] + 1}: {what} near {text!r}")
        return
    for child in node.children:
        walk(path, src, child)


for path in sys.argv[1:]:
    with open(path, "rb") as f:
        src = f.read()
    walk(path, src, parser.parse(src).root_node)
print(f"{len(sys.argv) - 1} files parsed, {problems} problems")
sys.exit(1 if problems else 0)
