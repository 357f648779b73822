"""Every use of the TensorRT API in the thin layer, found by reading its source (AST), never by running it.

A use is `Class.member` (or a module-level `function` / `Class`) as the bindings name it: `trt.BuilderFlag.FP16`
is `BuilderFlag.FP16`, `builder.create_network(flags)` is `Builder.create_network` with one positional argument.
Types are followed by a small inference over each function, in source order:
- names bound to the module: `import tensorrt as trt`, `x = require("tensorrt", ...)` (anywhere in the file);
- annotations (`engine: trt.ICudaEngine`, `Optional[...]`, `List[...]`, on parameters, variables and `self.x`),
  return annotations of the file's own functions and methods;
- constructors (`trt.Builder(logger)`), and the return type of every binding method and property, read from the
  dumped pybind11 signatures (`-> tensorrt.INetworkDefinition`);
- `for` loops and comprehensions over lists of a known element type.
A Python subclass of a TensorRT class (a logger, a calibrator, a progress monitor) counts too: each method it
defines (other than `__init__` and `_private` ones) is an override of `Base.method`, and each public attribute
it sets on `self` is `Base.attribute` (the subclass's own state must be `_private`, so that an attribute
TensorRT does not have, such as `ILogger.min_severity`, cannot pass for one it reads).
A use inside a function that tests `hasattr(..., "member")` is marked guarded.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

# The thin layer: every file that touches `tensorrt` (cuda_buffers.py does not; the check asserts it).
THIN_LAYER = (
    "agent/engine/trt_builder.py",
    "agent/engine/trt_loader.py",
    "agent/runtime/tensorrt_runner.py",
    "agent/runtime/cuda_buffers.py",
)

# Return types that pybind11 prints as no class at all (C++ names are mapped by `Api.parse_type`).
RETURN_TYPE_FIXES = {
    "get_plugin_registry": "IPluginRegistry",
}

_PREFIX = re.compile(r"\b(?:tensorrt_bindings\.)?(?:tensorrt\.)+")


@dataclass(frozen=True)
class Use:
    name: str  # "Builder.create_network", "BuilderFlag.FP16", "init_libnvinfer_plugins", "__version__"
    file: str
    line: int
    kind: str  # "attr" (read), "set" (assigned), "call", "override", "base" (subclassed)
    positional: int = 0  # calls: positional arguments (including an explicit self for Class.method(self, ...))
    keywords: Tuple[str, ...] = ()
    starred: bool = False
    params: Tuple[str, ...] = ()  # overrides: the Python method's parameters after self
    guarded: bool = False  # inside a function that tests hasattr(..., member)
    implicit_self: bool = True  # calls: False for Class.method(self, ...) and module functions

    def where(self) -> str:
        return f"{self.file}:{self.line}"


class Api:
    """What the inference needs from the dumps: which names exist (in any version) and their types."""

    def __init__(self, dumps: Iterable[Dict[str, object]]) -> None:
        self.entries: Dict[str, Dict[str, object]] = {}
        self.signatures: Dict[str, List[str]] = {}
        for dump in sorted(dumps, key=lambda d: version_tuple(str(d["version"]))):  # the newest entry wins
            api = dump["api"]
            assert isinstance(api, dict)
            self.entries.update(api)
            for name, entry in api.items():
                self.signatures.setdefault(name, []).extend(entry.get("signatures", []) or [])

    def kind(self, name: str) -> Optional[str]:
        entry = self.entries.get(name)
        return str(entry["kind"]) if entry else None

    def bases(self, cls: str) -> List[str]:
        entry = self.entries.get(cls) or {}
        return [str(b) for b in entry.get("bases", []) or []]  # type: ignore[union-attr]

    def member(self, cls: str, attr: str) -> Optional[str]:
        """`cls.attr` or the nearest base class that defines it (as the bindings name it)."""
        for owner in [cls, *self.bases(cls)]:
            if f"{owner}.{attr}" in self.entries:
                return f"{owner}.{attr}"
        return None

    def returns(self, name: str) -> Optional[Type]:
        if name in RETURN_TYPE_FIXES:
            return Type("inst", RETURN_TYPE_FIXES[name])
        for signature in reversed(self.signatures.get(name, [])):  # newest first; older ones print C++ names
            found = self.parse_type(_PREFIX.sub("", str(signature).rsplit("->", 1)[-1]))
            if found is not None:
                return found
        return None

    def parse_type(self, text: str) -> Optional[Type]:
        text = text.strip()
        if "::" in text:  # 'nvinfer1::IEngineInspector' (8.6), 'nvonnxparser::IParserError'
            bare = text.rsplit("::", 1)[-1]
            for candidate in (bare, bare[1:] if bare.startswith("I") else bare):
                if self.kind(candidate) in ("class", "enum"):
                    return Type("inst", candidate)
            return None
        for wrapper in ("Optional[", "typing.Optional["):
            if text.startswith(wrapper) and text.endswith("]"):
                return self.parse_type(text[len(wrapper):-1])
        if text.startswith("List[") and text.endswith("]"):
            inner = self.parse_type(text[5:-1])
            return Type("list", inner.name) if inner is not None and inner.tag == "inst" else None
        if self.kind(text) in ("class", "enum"):
            return Type("inst", text)
        return None


@dataclass(frozen=True)
class Type:
    tag: str  # "module" (tensorrt itself), "class" (a class object), "inst" (an instance), "list" (of instances)
    name: str = ""


MODULE = Type("module")


@dataclass
class _Scope:
    names: Dict[str, Type] = field(default_factory=dict)
    self_class: Optional[str] = None  # the TensorRT base when inside a Python subclass of it
    own_class: Optional[str] = None  # the project class we are in (for self.attr annotations and methods)
    guards: Set[str] = field(default_factory=set)


class _Extractor:
    def __init__(self, path: str, tree: ast.Module, api: Api) -> None:
        self.path = path
        self.tree = tree
        self.api = api
        self.uses: List[Use] = []
        self.aliases = self._module_aliases()
        self.functions: Dict[str, ast.AST] = {}  # "name" and "Class.name" -> def, for return annotations
        self.attr_types: Dict[str, Dict[str, Type]] = {}  # project class -> self attribute -> type
        self.trt_bases: Dict[str, str] = {}  # Python subclass name -> TensorRT base class
        self._last_node = 0  # id() of the expression of the last recorded use

    # module-level facts ----------------------------------------------------------------------------------------
    def _module_aliases(self) -> Set[str]:
        names: Set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "tensorrt":
                        names.add(alias.asname or "tensorrt")
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                call = node.value
                if isinstance(call.func, ast.Name) and call.func.id == "require" and call.args:
                    first = call.args[0]
                    if isinstance(first, ast.Constant) and first.value == "tensorrt":
                        names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        return names

    def _index(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.functions[f"{node.name}.{item.name}"] = item
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, node)
        for node in ast.walk(self.tree):  # self.x: T annotations, wherever in the class they are
            if isinstance(node, ast.ClassDef):
                types = self.attr_types.setdefault(node.name, {})
                for sub in ast.walk(node):
                    if isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Attribute):
                        target = sub.target
                        if isinstance(target.value, ast.Name) and target.value.id == "self":
                            found = self.annotation(sub.annotation, _Scope())
                            if found is not None:
                                types[target.attr] = found

    # types ---------------------------------------------------------------------------------------------------
    def annotation(self, node: Optional[ast.AST], scope: _Scope) -> Optional[Type]:
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.Subscript):
            outer = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
            inner = node.slice
            if type(inner).__name__ == "Index":  # Python 3.8 wraps the subscript in ast.Index
                inner = getattr(inner, "value", inner)
            if outer == "Optional":
                return self.annotation(inner, scope)
            if outer in ("List", "Sequence", "list"):
                element = self.annotation(inner, scope)
                return Type("list", element.name) if element is not None and element.tag == "inst" else None
            return None
        dotted = _dotted(node)
        if dotted and dotted[0] in self.aliases:
            name = ".".join(dotted[1:])
            if self.api.kind(name) in ("class", "enum"):
                return Type("inst", name)
        return None

    def infer(self, node: ast.AST, scope: _Scope) -> Optional[Type]:
        """The type of an expression, recording every TensorRT use inside it."""
        if isinstance(node, ast.Name):
            if node.id in scope.names:
                return scope.names[node.id]
            if node.id in self.aliases:
                return MODULE
            return None
        if isinstance(node, ast.Attribute):
            return self.attribute(node, scope, "attr")
        if isinstance(node, ast.Call):
            return self.call(node, scope)
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            types = [self.infer(e, scope) for e in node.elts]
            first = types[0]
            return Type("list", first.name) if first is not None and first.tag == "inst" else None
        if isinstance(node, ast.Subscript):
            base = self.infer(node.value, scope)
            self.visit_expr(node.slice, scope)
            return Type("inst", base.name) if base is not None and base.tag == "list" else None
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = _Scope(dict(scope.names), scope.self_class, scope.own_class, scope.guards)
            for generator in node.generators:
                iterated = self.infer(generator.iter, inner)
                self.bind(generator.target, Type("inst", iterated.name) if iterated is not None and iterated.tag == "list" else None, inner)
                for condition in generator.ifs:
                    self.visit_expr(condition, inner)
            if isinstance(node, ast.DictComp):
                self.visit_expr(node.key, inner)
                self.visit_expr(node.value, inner)
                return None
            element = self.infer(node.elt, inner)
            return Type("list", element.name) if element is not None and element.tag == "inst" else None
        self.visit_expr(node, scope)
        return None

    def visit_expr(self, node: Optional[ast.AST], scope: _Scope) -> None:
        if node is None:
            return
        expression = (ast.Name, ast.Attribute, ast.Call, ast.List, ast.Tuple, ast.Subscript, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
        if isinstance(node, expression) and not (isinstance(node, (ast.List, ast.Tuple)) and not node.elts):
            self.infer(node, scope)
            return
        for child in ast.iter_child_nodes(node):
            self.visit_expr(child, scope)

    def _record(self, name: str, node: ast.AST, kind: str, scope: _Scope, **extra: object) -> None:
        # `trt.BuilderFlag.FP16` is one use (BuilderFlag.FP16), not two: drop the step that led here
        value = getattr(node, "value", None)
        if self.uses and value is not None and self._last_node == id(value) and self.uses[-1].kind == "attr":
            self.uses.pop()
        self._last_node = id(node)
        member = name.rsplit(".", 1)[-1]
        self.uses.append(Use(name, self.path, getattr(node, "lineno", 0), kind, guarded=member in scope.guards, **extra))  # type: ignore[arg-type]

    def attribute(self, node: ast.Attribute, scope: _Scope, kind: str) -> Optional[Type]:
        base = self.infer(node.value, scope)
        attr = node.attr
        if base is None:
            # self.x inside a subclass of a TensorRT class: public names are TensorRT's, _private ones are ours
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                if scope.own_class and attr in self.attr_types.get(scope.own_class, {}):
                    return self.attr_types[scope.own_class][attr]
                if scope.self_class and not attr.startswith("_") and f"{scope.own_class}.{attr}" not in self.functions:
                    name = self.api.member(scope.self_class, attr) or f"{scope.self_class}.{attr}"
                    self._record(name, node, kind, scope)
            return None
        if base.tag == "module":
            if self.api.kind(attr) in ("class", "enum"):
                self._record(attr, node, "attr" if kind == "attr" else kind, scope)
                return Type("class", attr)
            self._record(attr, node, kind, scope)
            return Type("class", "function:" + attr) if self.api.kind(attr) == "function" else None
        if base.tag == "class":
            name = f"{base.name}.{attr}"
            found = self.api.member(base.name, attr) or name
            self._record(found, node, kind, scope)
            entry_kind = self.api.kind(found)
            if entry_kind in ("class", "enum"):
                return Type("class", found)
            if entry_kind == "enum_value":
                return Type("inst", base.name)
            if entry_kind == "method":
                return Type("class", "method:" + found)
            return None
        if base.tag == "inst":
            found = self.api.member(base.name, attr) or f"{base.name}.{attr}"
            self._record(found, node, kind, scope)
            entry_kind = self.api.kind(found)
            if entry_kind == "property":
                return self.api.returns(found)
            if entry_kind == "method":
                return Type("class", "bound:" + found)
            return None
        return None

    def call(self, node: ast.Call, scope: _Scope) -> Optional[Type]:
        own = self.own_method_return(node, scope)
        if own is not None:
            return own
        for argument in node.args:
            self.visit_expr(argument.value if isinstance(argument, ast.Starred) else argument, scope)
        for keyword in node.keywords:
            self.visit_expr(keyword.value, scope)
        shape = {
            "positional": len([a for a in node.args if not isinstance(a, ast.Starred)]),
            "keywords": tuple(k.arg for k in node.keywords if k.arg),
            "starred": any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords),
        }
        func = node.func
        if isinstance(func, ast.Attribute):
            before = len(self.uses)
            target = self.attribute(func, scope, "attr")
            if target is not None and target.tag == "class":
                name = target.name.split(":", 1)[-1]
                # turn the attribute read just recorded into a call with its arguments
                if len(self.uses) > before and self.uses[-1].name == name:
                    self.uses.pop()
                if target.name.startswith(("method:", "bound:", "function:")):
                    self._record(name, func, "call", scope, implicit_self=target.name.startswith("bound:"), **shape)
                    return self.api.returns(name)
                self._record(name + ".__init__", func, "call", scope, **shape)  # a constructor
                return Type("inst", name)
            return None
        if isinstance(func, ast.Name):
            if func.id == "hasattr":
                return None
            own = self.functions.get(func.id)
            if own is not None:
                return self.annotation(getattr(own, "returns", None), scope)
            return None
        self.visit_expr(func, scope)
        return None

    def own_method_return(self, node: ast.Call, scope: _Scope) -> Optional[Type]:
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self" and scope.own_class:
            own = self.functions.get(f"{scope.own_class}.{func.attr}")
            if own is not None:
                for argument in node.args:
                    self.visit_expr(argument, scope)
                return self.annotation(getattr(own, "returns", None), scope)
        return None

    def bind(self, target: ast.AST, value: Optional[Type], scope: _Scope) -> None:
        if isinstance(target, ast.Name):
            if value is not None:
                scope.names[target.id] = value
            else:
                scope.names.pop(target.id, None)
        elif isinstance(target, (ast.Tuple, ast.List)):
            element = Type("inst", value.name) if value is not None and value.tag == "list" else None
            for item in target.elts:
                self.bind(item, element, scope)
        elif isinstance(target, ast.Attribute):
            self.attribute(target, scope, "set")

    # statements ----------------------------------------------------------------------------------------------
    def value_type(self, node: ast.AST, scope: _Scope) -> Optional[Type]:
        if isinstance(node, ast.Call):
            found = self.own_method_return(node, scope)
            if found is not None:
                return found
        return self.infer(node, scope)

    def statements(self, body: List[ast.stmt], scope: _Scope) -> None:
        for statement in body:
            self.statement(statement, scope)

    def statement(self, node: ast.stmt, scope: _Scope) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.function(node, scope)
        elif isinstance(node, ast.ClassDef):
            self.class_def(node, scope)
        elif isinstance(node, ast.Assign):
            value = self.value_type(node.value, scope)
            for target in node.targets:
                self.bind(target, value, scope)
        elif isinstance(node, ast.AnnAssign):
            value = self.value_type(node.value, scope) if node.value is not None else None
            declared = self.annotation(node.annotation, scope)
            self.bind(node.target, value or declared, scope)
        elif isinstance(node, ast.AugAssign):
            self.visit_expr(node.value, scope)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            iterated = self.infer(node.iter, scope)
            self.bind(node.target, Type("inst", iterated.name) if iterated is not None and iterated.tag == "list" else None, scope)
            self.statements(node.body, scope)
            self.statements(node.orelse, scope)
        elif isinstance(node, (ast.If, ast.While)):
            self.visit_expr(node.test, scope)
            self.statements(node.body, scope)
            self.statements(node.orelse, scope)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.visit_expr(item.context_expr, scope)
            self.statements(node.body, scope)
        elif isinstance(node, ast.Try):
            self.statements(node.body, scope)
            for handler in node.handlers:
                self.statements(handler.body, scope)
            self.statements(node.orelse, scope)
            self.statements(node.finalbody, scope)
        elif isinstance(node, (ast.Return, ast.Expr)):
            if node.value is not None:
                self.value_type(node.value, scope)
        elif isinstance(node, ast.Raise):
            self.visit_expr(node.exc, scope)
        elif isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass, ast.Break, ast.Continue, ast.Global, ast.Nonlocal)):
            return
        else:
            self.visit_expr(node, scope)

    def function(self, node: ast.AST, outer: _Scope) -> None:
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        scope = _Scope(dict(outer.names), outer.self_class, outer.own_class, _guards(node))
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for argument in arguments:
            if argument.arg in self.aliases and argument.annotation is not None:
                scope.names.pop(argument.arg, None)  # a parameter named like the module is the module (runner._load)
                continue
            found = self.annotation(argument.annotation, scope)
            if found is not None:
                scope.names[argument.arg] = found
            else:
                scope.names.pop(argument.arg, None)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit_expr(default, outer)
        self.statements(node.body, scope)

    def class_def(self, node: ast.ClassDef, outer: _Scope) -> None:
        trt_base: Optional[str] = None
        for base in node.bases:
            found = self.infer(base, outer)
            if found is not None and found.tag == "class" and ":" not in found.name:
                trt_base = found.name
                self.uses[-1] = Use(found.name, self.path, base.lineno, "base")
        scope = _Scope(dict(outer.names), trt_base, node.name, set(outer.guards))
        if trt_base is not None:
            self.trt_bases[node.name] = trt_base
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    params = tuple(a.arg for a in (item.args.posonlyargs + item.args.args)[1:])
                    name = self.api.member(trt_base, item.name) or f"{trt_base}.{item.name}"
                    self.uses.append(Use(name, self.path, item.lineno, "override", params=params))
        self.statements(node.body, scope)

    def run(self) -> List[Use]:
        self._index()
        self.statements(self.tree.body, _Scope())
        return self.uses


def version_tuple(text: str) -> Tuple[int, int, int]:
    """'10.8.0.43' -> (10, 8, 0); '8.5' -> (8, 5, 0)."""
    parts = [*(int(p) for p in re.findall(r"\d+", text)[:3]), 0, 0, 0]
    return parts[0], parts[1], parts[2]


def _dotted(node: ast.AST) -> List[str]:
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.insert(0, node.id)
        return parts
    return []


def _guards(node: ast.AST) -> Set[str]:
    """Members a function tests with hasattr(x, "member")."""
    found: Set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "hasattr" and len(sub.args) == 2:
            name = sub.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.add(name.value)
    return found


def extract(path: str, source: str, api: Api) -> List[Use]:
    """Every TensorRT use in one source file."""
    return _Extractor(path, ast.parse(source, filename=path), api).run()


def extract_thin_layer(root: Path, api: Api, files: Iterable[str] = THIN_LAYER) -> List[Use]:
    uses: List[Use] = []
    for relative in files:
        uses.extend(extract(relative, (root / relative).read_text(encoding="utf-8"), api))
    return uses
