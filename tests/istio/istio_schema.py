"""Validation of the manifests under istio/ against Istio's resource schemas.

The schemas are the pydantic models of PyPI `cloudcoil-models-istio`, generated
from Istio's CRDs (OpenAPI v3). Its newest release (1.31.x) needs Python 3.14;
on this project's Python 3.11 the newest that installs is 1.24.2.1 (the Istio
1.24 CRDs). The models are used stricter than they are by default, because a
Kubernetes API server with strict field validation (kubectl's default) rejects
what the defaults would let through:

- `strict=True`: no type coercion (a string where the schema has an integer is
  an error, as it is for the API server);
- round trip: the validated object, dumped back by its schema aliases, must
  equal the document. The models ignore unknown fields, so any field that the
  schema does not know disappears in the round trip and is reported with its
  path.

One deliberate exception, for a value newer than the 1.24 schema:
`WasmPlugin.spec.failStrategy: FAIL_RELOAD` (istio/api#3471, Istio 1.27). It is
validated as `FAIL_CLOSE` and put back; nothing else is relaxed.

`IstioOperator` (install.istio.io) is no CRD of these models (istioctl reads it;
the Kubernetes CRD keeps its spec schemaless): `check_istio_operator` checks the
fields this project sets by name and type, and the end-to-end test consumes
them (stat tags and access-log format) in a real Envoy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pydantic
import yaml

import cloudcoil.models.istio  # noqa: F401  (registers the Istio kinds)
from cloudcoil import resources

ROOT = Path(__file__).resolve().parents[2]
ISTIO_DIR = ROOT / "istio"

SCHEMA_PACKAGE = "cloudcoil-models-istio"

# (kind, path in the document) -> values newer than the schema, and the value
# that stands in for them during validation.
NEWER_THAN_SCHEMA: dict[tuple[str, tuple[str, ...]], tuple[set[str], str]] = {
    ("WasmPlugin", ("spec", "failStrategy")): ({"FAIL_RELOAD"}, "FAIL_CLOSE"),
}


class InvalidManifest(ValueError):
    pass


def documents(root: Path = ISTIO_DIR) -> Iterator[tuple[str, dict]]:
    """Every YAML document under root, as (file:index, document)."""
    for path in sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            yield f"{path.relative_to(root)}#{i}", doc


def schema_class(doc: dict):
    if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
        raise InvalidManifest("not a Kubernetes resource: apiVersion and kind are required")
    try:
        return resources._Scheme.get(doc["kind"], doc["apiVersion"])
    except Exception as e:  # the scheme raises its own error types
        raise InvalidManifest(f"no schema for {doc['apiVersion']} {doc['kind']}: {e}") from None


def _get(doc: Any, path: tuple[str, ...]):
    for p in path:
        if not isinstance(doc, dict) or p not in doc:
            return None
        doc = doc[p]
    return doc


def _set(doc: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


def _diff(want: Any, got: Any, path: str = "") -> list[str]:
    """Where `got` (the round trip) differs from `want` (the document)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k, v in want.items():
            p = f"{path}.{k}" if path else str(k)
            if k not in got:
                out.append(f"{p}: unknown field")
            else:
                out.extend(_diff(v, got[k], p))
        for k in got.keys() - want.keys():
            out.append(f"{path}.{k}: added by the schema")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: list length {len(want)} became {len(got)}"]
        out = []
        for i, (a, b) in enumerate(zip(want, got)):
            out.extend(_diff(a, b, f"{path}[{i}]"))
        return out
    if want != got or isinstance(want, bool) != isinstance(got, bool):
        return [f"{path}: {want!r} became {got!r}"]
    return []


def validate(doc: dict) -> None:
    """Raises InvalidManifest naming every problem; returns None when the
    document is valid for its kind's schema."""
    if isinstance(doc, dict) and doc.get("kind") == "IstioOperator":
        check_istio_operator(doc)
        return
    cls = schema_class(doc)
    work = copy.deepcopy(doc)
    for (kind, path), (newer, stand_in) in NEWER_THAN_SCHEMA.items():
        if doc.get("kind") == kind and _get(work, path) in newer:
            _set(work, path, stand_in)
    try:
        obj = cls.model_validate(work, strict=True)
    except pydantic.ValidationError as e:
        problems = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise InvalidManifest("; ".join(problems)) from None
    back = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    problems = _diff(work, back)
    if problems:
        raise InvalidManifest("; ".join(problems))


# The MeshConfig fields this project sets, with their types (istio/api
# mesh/v1alpha1/config.proto and proxy.proto; names as in YAML).
_MESH_FIELDS = {"defaultConfig": dict, "extensionProviders": list}
_PROXY_FIELDS = {"extraStatTags": list}
_PROVIDER_FIELDS = {"name": str, "envoyFileAccessLog": dict}
_FILE_LOG_FIELDS = {"path": str, "logFormat": dict}
_LOG_FORMAT_FIELDS = {"text": str, "labels": dict}


def _fields(obj: Any, allowed: dict, where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected a map"]
    out = []
    for k, v in obj.items():
        if k not in allowed:
            out.append(f"{where}.{k}: unknown field (expected one of {sorted(allowed)})")
        elif not isinstance(v, allowed[k]):
            out.append(f"{where}.{k}: expected {allowed[k].__name__}, got {type(v).__name__}")
    return out


def check_istio_operator(doc: dict) -> None:
    problems = _fields(doc, {"apiVersion": str, "kind": str, "metadata": dict, "spec": dict}, "")
    if doc.get("apiVersion") != "install.istio.io/v1alpha1":
        problems.append(f"apiVersion: {doc.get('apiVersion')!r}")
    spec = doc.get("spec", {})
    problems += _fields(spec, {"meshConfig": dict}, "spec")
    mesh = spec.get("meshConfig", {})
    problems += _fields(mesh, _MESH_FIELDS, "spec.meshConfig")
    proxy = mesh.get("defaultConfig", {})
    problems += _fields(proxy, _PROXY_FIELDS, "spec.meshConfig.defaultConfig")
    for t in proxy.get("extraStatTags", []):
        if not isinstance(t, str) or not t.replace("_", "").isalnum():
            problems.append(f"extraStatTags: {t!r} is not a tag name")
    for i, p in enumerate(mesh.get("extensionProviders", [])):
        w = f"spec.meshConfig.extensionProviders[{i}]"
        problems += _fields(p, _PROVIDER_FIELDS, w)
        log = p.get("envoyFileAccessLog", {}) if isinstance(p, dict) else {}
        problems += _fields(log, _FILE_LOG_FIELDS, w + ".envoyFileAccessLog")
        fmt = log.get("logFormat", {}) if isinstance(log, dict) else {}
        problems += _fields(fmt, _LOG_FORMAT_FIELDS, w + ".envoyFileAccessLog.logFormat")
        for k, v in (fmt.get("labels") or {}).items() if isinstance(fmt, dict) else []:
            if not isinstance(v, str):
                problems.append(f"{w}...labels.{k}: expected a string")
    if problems:
        raise InvalidManifest("; ".join(problems))
